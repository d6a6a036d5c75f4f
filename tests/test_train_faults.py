"""Faults in a run's life, injected: two runs in one directory, a restart over a run that never
checkpointed, damaged checkpoints, a full disk, a mid-epoch resume, bad config input. Each ends
with a clear error naming the file (or the key) and the way on, and with the data on disk whole.

Most tests copy one run interrupted mid-epoch (`interrupted`: quickstart on tiny records, one
epoch of 13 iterations, stopped at iteration 10 as Ctrl-C would: last.pt at 10, last.prev.pt at
5, no best.pt yet)."""
from __future__ import annotations

import builtins
import dataclasses
import errno
import inspect
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train.files
import train.metrics
import train.run
from fixtures import FullDisk, subprocess_env, tiny_args
from train.checkpoint import CheckpointError, load_checkpoint
from train.config import ConfigError, load_config
from train.files import RunError, RunLock
from train.metrics import read_metrics
from train.run import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def stop_at(monkeypatch, iteration: int) -> None:
    """Request a stop (what Ctrl-C does) once `iteration` steps are taken."""
    real = train.run.train_one_epoch

    def train_one_epoch(*args, **kwargs):
        bound = inspect.signature(real).bind(*args, **kwargs)
        state, hooks = bound.arguments["state"], bound.arguments["hooks"]
        bound.arguments["hooks"] = dataclasses.replace(
            hooks, stop_requested=lambda: state.iteration >= iteration or hooks.stop_requested())
        return real(*bound.args, **bound.kwargs)

    monkeypatch.setattr(train.run, "train_one_epoch", train_one_epoch)


@pytest.fixture(scope="module")
def interrupted(colour_cifar, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("interrupted")
    with pytest.MonkeyPatch.context() as monkeypatch:
        stop_at(monkeypatch, 10)
        result = main(tiny_args(colour_cifar, out, "cut", "schedule.total=1", "run.log_every=2"))
    assert result.status == "interrupted"
    return out / "cut"


@pytest.fixture
def run(interrupted, tmp_path) -> Path:
    """A copy of the interrupted run to damage."""
    return Path(shutil.copytree(interrupted, tmp_path / "cut"))


def iteration_of(path: Path) -> int:
    return load_checkpoint(path)["state"]["iteration"]


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)


# ----------------------------------------------------------------------------- 9: one run a dir
def test_interrupted_run_keeps_the_checkpoint_before_the_last(interrupted):
    assert iteration_of(interrupted / "last.pt") == 10
    assert iteration_of(interrupted / "last.prev.pt") == 5
    assert temporaries(interrupted) == []


@pytest.mark.slow
def test_second_run_with_the_same_name_is_refused_with_the_first_ones_pid(colour_cifar,
                                                                          tmp_path):
    args = tiny_args(colour_cifar, tmp_path, "shared", "schedule.total=20", "run.log_every=1")
    cmd = [sys.executable, "train/run.py"]
    first = subprocess.Popen(cmd + args, cwd=ROOT, env=subprocess_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "shared"
    try:
        deadline = time.monotonic() + 120
        while not (run / "last.pt").exists() and first.poll() is None:
            assert time.monotonic() < deadline, "the first run wrote no checkpoint"
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()[-3000:]
        second = subprocess.run(cmd + args + ["optim.lr=0.05"], cwd=ROOT, env=subprocess_env(),
                                capture_output=True, text=True, timeout=120)
        resumed = subprocess.run(cmd + ["--resume", str(run)], cwd=ROOT, env=subprocess_env(),
                                 capture_output=True, text=True, timeout=120)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    for refused in (second, resumed):
        assert refused.returncode == 1
        assert f"error: {run} is in use by another run (pid {first.pid})" in refused.stderr
        assert "Traceback" not in refused.stderr
    # the first run's files are its own alone
    assert load_config(run / "config.yaml").optim.lr == 0.1
    iters = [r["iter"] for r in read_metrics(run) if r["kind"] == "train"]
    assert iters == sorted(set(iters))
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert temporaries(run) == []
    RunLock(run).release()  # the killed run's lock went with it


HOLD_LOCK = """
import sys
from train.files import RunLock
lock = RunLock(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()
"""


def test_run_and_resume_are_refused_while_another_process_holds_the_dir(run, colour_cifar):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], cwd=ROOT,
                              env=subprocess_env(), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
        refusal = rf"^{run} is in use by another run \(pid {holder.pid}\); wait for it"
        with pytest.raises(RunError, match=refusal):
            main(["--resume", str(run)])
        with pytest.raises(RunError, match=refusal):
            main(tiny_args(colour_cifar, run.parent, run.name))
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    finally:
        holder.kill()
        holder.wait(30)
    RunLock(run).release()  # the lock died with its holder


def test_lock_names_the_holder_and_is_released_on_close(tmp_path):
    lock = RunLock(tmp_path / "r")
    assert (tmp_path / "r" / ".lock").read_text() == f"{os.getpid()}\n"
    with pytest.raises(RunError, match=rf"r is in use by another run \(pid {os.getpid()}\)"):
        RunLock(tmp_path / "r")
    lock.release()
    RunLock(tmp_path / "r").release()


def test_temporary_names_are_unique(tmp_path, monkeypatch):
    opened = []

    def spy_open(file, *args, **kwargs):
        opened.append(Path(file).name)
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(train.files, "open", spy_open, raising=False)
    for _ in range(2):
        train.files.atomic_write(tmp_path / "last.pt", b"x")
    assert len(set(opened)) == 2 and all(n.startswith(".last.pt.") for n in opened)
    assert os.listdir(tmp_path) == ["last.pt"]


# ------------------------------------------------------- 10: a restart never mixes two runs
def test_restart_over_a_run_without_checkpoint_sets_its_records_aside(colour_cifar, tmp_path,
                                                                      capsys):
    run = tmp_path / "again"
    run.mkdir()
    old = {"config.yaml": b"optim:\n  lr: 0.5\n",
           "metrics.jsonl": b'{"kind": "train", "iter": 4, "epoch": 0, "loss": 99.0, '
                            b'"error": 99.0, "lr": 0.1}\n',
           "events.out.tfevents.1.host.1.0": b"old events"}
    for name, data in old.items():
        (run / name).write_bytes(data)

    result = main(tiny_args(colour_cifar, tmp_path, "again", "schedule.total=1"))
    assert result.status == "completed"
    for name, data in old.items():  # nothing lost
        assert (run / "aborted-1" / name).read_bytes() == data
    assert f"moved them to {run / 'aborted-1'}" in capsys.readouterr().out
    records = read_metrics(run)  # nothing mixed
    train_iters = [r["iter"] for r in records if r["kind"] == "train"]
    assert train_iters == sorted(set(train_iters)) and 99.0 not in [r.get("loss") for r in records]
    assert [p.read_bytes() for p in run.glob("events.out.tfevents.*")] != [b"old events"]
    assert load_config(run / "config.yaml").optim.lr == 0.1


def test_new_run_over_a_run_with_a_checkpoint_is_refused(colour_cifar, run):
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match=rf"{run} already holds a run; continue it with "
                                          rf"--resume {run} or pick another run.name"):
        main(tiny_args(colour_cifar, run.parent, run.name, "schedule.total=1"))
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


# ----------------------------------------------------------- 11: damaged checkpoints
def _write_code_pickle(path: Path, marker: Path) -> None:
    class RunsCode:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    torch.save({"model": RunsCode()}, path)


@pytest.mark.parametrize("damage, why", [
    ("truncated", r"it is truncated or not a checkpoint \(RuntimeError: PytorchStreamReader"),
    ("empty", r"it is empty \(0 bytes\)"),
    ("random", r"it is truncated or not a checkpoint \(\w+: \S"),
    ("code", r"it asks to run code when loaded \(posix.mkdir\); refused, nothing was run"),
])
def test_damaged_checkpoint_is_named_without_unsafe_advice(run, damage, why):
    last, marker = run / "last.pt", run / "ran"
    data = last.read_bytes()
    if damage == "truncated":
        last.write_bytes(data[:len(data) // 2])
    elif damage == "empty":
        last.write_bytes(b"")
    elif damage == "random":
        last.write_bytes(random.Random(0).randbytes(4096))
    else:
        _write_code_pickle(last, marker)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(last)
    message = str(error.value)
    assert message.startswith(f"{last}: cannot load: ") and re.search(why, message)
    assert "weights_only" not in message and "safe_globals" not in message
    assert not marker.exists()


def test_resume_falls_back_to_the_previous_checkpoint(run, capsys):
    (run / "last.pt").write_bytes(b"")
    result = main(["--resume", str(run)])
    assert result.status == "completed"
    assert (f"warning: {run / 'last.pt'}: cannot load: it is empty (0 bytes); resuming from "
            f"{run / 'last.prev.pt'} (iteration 5) instead") in capsys.readouterr().err
    assert iteration_of(run / "last.pt") == 13
    iters = [r["iter"] for r in read_metrics(run) if r["kind"] == "train"]
    assert iters == sorted(set(iters)) and iters[-1] == 13


def test_resume_with_no_loadable_checkpoint_names_both_and_the_way_on(run, capsys):
    (run / "best.pt").write_bytes((run / "last.pt").read_bytes())
    (run / "last.pt").write_bytes(random.Random(1).randbytes(100))
    (run / "last.prev.pt").write_bytes(b"")
    with pytest.raises(CheckpointError) as error:
        main(["--resume", str(run)])
    message = str(error.value)
    assert message.startswith(f"cannot resume {run}: {run / 'last.pt'}: cannot load: ")
    assert f"{run / 'last.prev.pt'}: cannot load: it is empty" in message
    assert message.endswith(f"continue from the best model's checkpoint instead: "
                            f"--resume {run / 'best.pt'}")
    result = main(["--resume", str(run / "best.pt")])  # the way on works (and the lock is free)
    assert result.status == "completed" and iteration_of(run / "last.pt") == 13
    (run / "summary.json").unlink()  # unfinished again: a finished run is not resumed at all
    (run / "best.pt").unlink()
    (run / "last.pt").write_bytes(b"")
    (run / "last.prev.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"start a new run \(another run.name\)$"):
        main(["--resume", str(run)])
    (run / "last.pt").unlink()
    (run / "last.prev.pt").unlink()
    with pytest.raises(CheckpointError, match=rf"{run / 'last.pt'}: no checkpoint here; .*"
                                              r"start it again without --resume"):
        main(["--resume", str(run)])


# ------------------------------------------------------------------ 5: the disk fills up


def test_full_disk_while_checkpointing_names_path_and_free_space(colour_cifar, tmp_path,
                                                                 monkeypatch):
    saves = []

    def open_fills_disk(file, *args, **kwargs):
        f = builtins.open(file, *args, **kwargs)
        if Path(file).name.startswith(".last.pt."):
            saves.append(file)
            return FullDisk(f) if len(saves) == 2 else f
        return f

    monkeypatch.setattr(train.files, "open", open_fills_disk, raising=False)
    with pytest.raises(RunError) as error:
        main(tiny_args(colour_cifar, tmp_path, "full", "schedule.total=1"))
    run = tmp_path / "full"
    message = str(error.value)
    assert message.startswith(f"cannot write {run / 'last.pt'} (")
    assert re.search(rf"no space left on the device, \d+\.\d [KMG]iB free in {run}", message)
    assert message.endswith(f"then --resume {run} continues from its last checkpoint")
    assert temporaries(run) == []
    assert iteration_of(run / "last.pt") == 5  # the checkpoint before is whole
    RunLock(run).release()  # and the run directory is free again


class FullDiskAppends:
    """metrics.jsonl opened unbuffered: its `fail_at`-th write stores half of the line, then
    fails as a full disk does."""

    def __init__(self, file, fail_at: int):
        self.file, self.fail_at, self.writes = file, fail_at, 0

    def write(self, data):
        self.writes += 1
        if self.writes == self.fail_at:
            self.file.write(bytes(data[:len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.file.write(data)

    def __getattr__(self, name):  # tell, fileno, close: the real file's
        return getattr(self.file, name)


def test_full_disk_while_appending_metrics_is_reported_as_while_checkpointing(
        colour_cifar, tmp_path, monkeypatch):
    """The third train record (iteration 8) meets a full disk: the same message as a full disk
    while checkpointing, metrics.jsonl keeps whole records only, last.pt (iteration 5) is whole,
    and once there is space the resumed run completes with one record per log step."""
    def open_fills_disk(file, *args, **kwargs):
        f = builtins.open(file, *args, **kwargs)
        return FullDiskAppends(f, 3) if Path(file).name == "metrics.jsonl" else f

    monkeypatch.setattr(train.metrics, "open", open_fills_disk, raising=False)
    with pytest.raises(RunError) as error:
        main(tiny_args(colour_cifar, tmp_path, "full", "schedule.total=1"))
    monkeypatch.undo()
    run = tmp_path / "full"
    message = str(error.value)
    assert re.fullmatch(
        rf"cannot write {re.escape(str(run / 'metrics.jsonl'))} \(\d+ B\): no space left on "
        rf"the device, \d+\.\d [KMG]iB free in {re.escape(str(run))}; free some space there; "
        rf"then --resume {re.escape(str(run))} continues from its last checkpoint", message)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [r["iter"] for r in map(json.loads, lines)] == [4, 5]  # whole records, none torn
    assert iteration_of(run / "last.pt") == 5 and temporaries(run) == []

    assert main(["--resume", str(run)]).status == "completed"  # the lock was released
    train_iters = [r["iter"] for r in read_metrics(run) if r["kind"] == "train"]
    assert train_iters == [4, 5, 8, 10, 12, 13]


# ----------------------------------------------------------- 12: a mid-epoch resume
def test_mid_epoch_resume_reports_the_whole_epoch(run):
    main(["--resume", str(run)])  # from iteration 10 of 13
    records = read_metrics(run)
    train = [r for r in records if r["kind"] == "train" and r["epoch"] == 0]
    assert [r["iter"] for r in train] == [2, 4, 5, 6, 8, 10, 12, 13]
    steps = [b["iter"] - a["iter"] for a, b in zip([{"iter": 0}] + train, train)]
    loss = sum(r["loss"] * n for r, n in zip(train, steps)) / 13  # every batch holds 32
    error = sum(r["error"] * n for r, n in zip(train, steps)) / 13
    epoch = next(r for r in records if r["kind"] == "epoch")
    assert epoch["train_loss"] == pytest.approx(loss, rel=1e-9)
    assert epoch["train_error"] == pytest.approx(error, rel=1e-9)


# ----------------------------------------------------------------- 13: config and evaluate
def test_empty_yaml_is_refused(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match=rf"^{empty}: the file is empty"):
        load_config(empty)


def test_type_error_in_an_override_names_the_override_not_the_file():
    with pytest.raises(ConfigError,
                       match=r"^override 'run.seed=abc': run.seed='abc': expected int, got str$"):
        load_config("configs/quickstart.yaml", ["optim.lr=0.2", "run.seed=abc"])


def test_bad_value_in_the_file_still_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  seed: abc\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: run.seed='abc': expected int"):
        load_config(bad, ["optim.lr=0.2"])


def test_evaluate_without_best_pt_says_how_to_evaluate_last_pt(run):
    from train.evaluate import main as evaluate_main

    with pytest.raises(FileNotFoundError, match=rf"^{run / 'best.pt'}: no such checkpoint .*"
                                                r"evaluate its latest weights with "
                                                r"--checkpoint last.pt$"):
        evaluate_main([str(run)])
    result = evaluate_main([str(run), "--checkpoint", "last.pt"])
    assert result["checkpoint"] == "last.pt" and result["count"] == 120
