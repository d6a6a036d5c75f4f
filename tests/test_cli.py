"""What a user sees at the command line when something is wrong: each expected failure is one
line, `error: ...`, naming what to do, with a non-zero exit, no traceback, and nothing written.
And what must not mislead: a finished run resumed, a smoke run met by the full reproduction,
folders that hold no run, synthetic-data runs, a benchmark part that failed.

The commands run as subprocesses (their `__main__` turns errors into that line) on tiny
records; each takes a few seconds, most of it importing torch."""
from __future__ import annotations

import csv
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
import torch
import yaml
from test_train_faults import keep_threads, stop_at  # noqa: F401 (keep_threads: autouse)

from fixtures import subprocess_env, tiny_args, write_tiny_cifar, write_tiny_imagenet
from tools import gpu_check
from tools.benchmark import report
from train.config import load_config
from train.run import finished_summary, shell_command
from train.run import main as train

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def cli(*args, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`python <args>` as a user runs it, from `cwd`."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """The failure's single stderr line, checked: non-zero exit, `error: `, the words in it
    (a warning that the machine is busy may come before it)."""
    lines = [line for line in proc.stderr.strip().splitlines()
             if not line.startswith("warning: load average")]
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: "), lines
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def files_in(folder: Path) -> dict[str, int]:
    """Every file under `folder` with its modification time."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(colour_cifar, tmp_path_factory) -> Path:
    """A tiny finished run (one epoch of 13 iterations)."""
    out, threads = tmp_path_factory.mktemp("finished"), torch.get_num_threads()
    assert train(tiny_args(colour_cifar, out, "done", "schedule.total=1")).status == "completed"
    torch.set_num_threads(threads)
    return out / "done"


# ---------------------------------------------------------------- train/run.py


def test_missing_records_one_line_and_no_run_directory(tmp_path):
    out = tmp_path / "runs"
    proc = cli("train/run.py", "configs/quickstart.yaml", f"data.root={tmp_path / 'none'}",
               f"run.out_dir={out}", "run.device=cpu")
    one_line_error(proc, "manifest.json: no records here", "make dataset-cifar10")
    assert not out.exists(), list(out.rglob("*"))  # not even runs/ with a .lock folder
    mine = tmp_path / "mine"  # a folder the run did not make is left as it was
    mine.mkdir()
    with pytest.raises(FileNotFoundError, match="no records here"):
        train(["configs/quickstart.yaml", f"data.root={tmp_path / 'none'}", "run.device=cpu",
               f"run.out_dir={tmp_path}", "run.name=mine"])
    assert mine.is_dir() and list(mine.iterdir()) == []


@NO_CUDA
def test_cuda_without_a_gpu_one_line(tmp_path):
    proc = cli("train/run.py", "configs/quickstart.yaml", "run.device=cuda",
               f"run.out_dir={tmp_path / 'runs'}")
    one_line_error(proc, "run.device=cuda", "use run.device=cpu")
    assert not (tmp_path / "runs").exists()


def test_a_bad_override_names_itself_once(tmp_path):
    proc = cli("train/run.py", "configs/quickstart.yaml", "data.bakend=ffcv",
               f"run.out_dir={tmp_path / 'runs'}")
    line = one_line_error(proc, "did you mean 'data.backend'")
    assert line.count("data.bakend=ffcv") == 1, line
    assert not (tmp_path / "runs").exists()


def test_streaming_cifar_arrays_is_refused_in_one_line(tmp_path):
    proc = cli("train/run.py", "configs/quickstart.yaml", "data.cache=stream",
               f"run.out_dir={tmp_path / 'runs'}")
    one_line_error(proc, "data.cache=stream: cifar10 is loaded into memory as arrays")
    assert not (tmp_path / "runs").exists()


def test_a_batch_larger_than_the_split_is_one_line_and_writes_nothing(colour_cifar, tmp_path):
    proc = cli("train/run.py", *tiny_args(colour_cifar, tmp_path / "runs", "big",
                                          "data.batch_size=4096"))
    one_line_error(proc, "416 samples over 1 rank(s) make no full batch of 4096",
                   "lower data.batch_size")
    assert not (tmp_path / "runs").exists()


def test_resume_of_a_finished_run_changes_nothing(finished):
    before = files_in(finished)
    proc = cli("train/run.py", "--resume", finished)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    [line] = proc.stdout.strip().splitlines()
    assert line.startswith(f"{finished} finished already (completed at iteration 13, test error")
    assert f"nothing changed; to evaluate it again: {shell_command('train/evaluate.py', finished)}"\
        in line
    assert files_in(finished) == before  # no new summary, events file, checkpoint or lock
    # resumed for a longer schedule, it is not finished: that trains on
    longer = load_config(finished / "config.yaml", ["schedule.total=2"])
    assert finished_summary(finished, longer) is None
    assert finished_summary(finished, load_config(finished / "config.yaml"))["iterations"] == 13


def test_a_new_run_over_a_finished_one_says_so(finished):
    proc = cli("train/run.py", "configs/quickstart.yaml", f"run.out_dir={finished.parent}",
               f"run.name={finished.name}", "run.device=cpu")
    one_line_error(proc, "holds a finished run", f"run.name={finished.name}-2")


def test_the_resume_hint_runs_as_copied(colour_cifar, tmp_path, monkeypatch, capsys):
    """The trainer's hint names this interpreter as the README does: .venv/bin/python from
    the repository's root when it is the venv's."""
    monkeypatch.chdir(ROOT)
    command = shell_command("train/run.py", "--resume", "runs/x y")
    python = Path(sys.executable).absolute()
    here = python.relative_to(ROOT) if python.is_relative_to(ROOT) else python
    assert command == shlex.join([str(here), "train/run.py", "--resume", "runs/x y"])
    if python == ROOT / ".venv" / "bin" / "python":
        assert command.startswith(".venv/bin/python train/run.py")
    stop_at(monkeypatch, 3)
    result = train(tiny_args(colour_cifar, tmp_path, "cut", "schedule.total=1"))
    assert result.status == "interrupted"
    assert (f"resume with: {shell_command('train/run.py', '--resume', tmp_path / 'cut')}"
            in capsys.readouterr().out)


# ---------------------------------------------------------------- analysis tools


@pytest.fixture
def runs(finished, tmp_path) -> dict[str, Path]:
    """The finished run, a synthetic-backend copy of it, and a folder holding only a lock."""
    synthetic = tmp_path / "synthetic"
    shutil.copytree(finished, synthetic)
    config = yaml.safe_load((synthetic / "config.yaml").read_text())
    config["data"]["backend"] = "synthetic"
    (synthetic / "config.yaml").write_text(yaml.safe_dump(config))
    leftover = tmp_path / "leftover"
    leftover.mkdir()
    (leftover / ".lock").write_text("123\n")
    return {"done": finished, "synthetic": synthetic, "leftover": leftover}


def test_table_skips_what_is_not_a_run_and_labels_synthetic_runs(runs, tmp_path):
    proc = cli("tools/table.py", runs["done"], runs["synthetic"], runs["leftover"],
               "--format", "csv")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"note: skipped {runs['leftover']}: not a run directory (no config.yaml)"]
    rows = {r["run"]: r for r in csv.DictReader(proc.stdout.splitlines())}
    assert rows["done"]["published"] == "8.75"  # ResNet-20, paper Table 6
    fake = rows["synthetic"]
    assert fake["table"] == "synthetic data (no dataset)" and fake["published"] == ""
    assert "random images, not cifar10" in fake["note"] and fake["measured"] != ""
    one_line_error(cli("tools/table.py", runs["leftover"]), "no run directory among")


def test_compare_skips_what_is_not_a_run_and_labels_runs(runs, tmp_path):
    out = tmp_path / "c.png"
    proc = cli("tools/compare.py", runs["done"], runs["synthetic"], runs["leftover"],
               "--out", out)
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"note: skipped {runs['leftover']}: not a run directory (no config.yaml)"]
    assert proc.stdout.strip() == f"{out}: done, synthetic (synthetic data)"
    one_line_error(cli("tools/compare.py", runs["leftover"], "--out", tmp_path / "d.png"),
                   "no run directory among")
    assert not (tmp_path / "d.png").exists()


def test_feature_grid_one_line_failures(runs, tmp_path):
    no_best = tmp_path / "no_best"
    shutil.copytree(runs["done"], no_best)
    (no_best / "best.pt").unlink()
    one_line_error(cli("tools/feature_grid.py", no_best), "best.pt: no such checkpoint yet")
    assert not list(no_best.glob("features_*"))


def test_preview_without_records_one_line(tmp_path):
    proc = cli("tools/preview.py", "--backend", "native", "--dataset", "imagenet", "--root",
               tmp_path / "imagenet", "--out", tmp_path / "p.png", "--device", "cpu")
    one_line_error(proc, "no records here", "make dataset-imagenet")
    assert not (tmp_path / "p.png").exists()


# ---------------------------------------------------------------- reproduce-cifar


def test_reproduce_cifar_keeps_smoke_runs_apart(colour_cifar, tmp_path):
    tiny = ["--data", colour_cifar, "--models", "resnet20", "data.val_size=64",
            "data.batch_size=32", "data.eval_batch_size=64", "run.threads=1"]
    smoke = cli(ROOT / "tools/reproduce_cifar.py", "--budget", "2", *tiny, cwd=tmp_path)
    assert smoke.returncode == 0, smoke.stderr[-2000:]
    folder = tmp_path / "runs" / "reproduce-cifar-budget2"
    assert f"smoke run (--budget 2): in {folder.relative_to(tmp_path)}" in smoke.stdout
    summary = json.loads((folder / "resnet20" / "summary.json").read_text())
    assert summary["iterations"] == 2 and not (tmp_path / "runs" / "reproduce-cifar").exists()

    before = files_in(folder)  # the full schedule pointed at the smoke runs: refused at once
    full = cli(ROOT / "tools/reproduce_cifar.py", "--out", folder, *tiny, cwd=tmp_path)
    one_line_error(full, f"{folder / 'resnet20'} holds a run of another schedule",
                   "(2 iterations, constant lr; this command trains 64000 iterations, lr x0.1 at "
                   "[32000, 48000])", "give --out another folder")
    assert files_in(folder) == before


# ---------------------------------------------------------------- benchmark, GPU check


def test_bench_refuses_missing_records_at_once(tmp_path):
    proc = cli("tools/bench.py", "--smoke", "--imagenet", tmp_path / "none", "--out", tmp_path)
    one_line_error(proc, f"--imagenet {tmp_path / 'none'}: no records here")
    assert list(tmp_path.iterdir()) == []


def test_bench_exits_1_when_a_part_fails_and_marks_it(tmp_path):
    cifar = write_tiny_cifar(tmp_path, n_train=96, n_test=48)
    imagenet = write_tiny_imagenet(tmp_path, n=8)
    (imagenet / "webdataset" / "val" / "shard-000000.tar").unlink()
    out = tmp_path / "out"
    proc = cli("tools/bench.py", "--smoke", "--cifar", cifar, "--imagenet", imagenet,
               "--backends", "native", "--only", "loaders", "--workers", "1", "--out", out)
    [md] = out.glob("*.md")  # a smoke run never takes the day's results' name
    assert md.stem.startswith(report.machine_tag(torch.device("cpu"))) and md.stem.endswith(
        "-smoke")
    line = one_line_error(proc, "1 of the parts asked for failed", "imagenet val native",
                          str(md))
    assert "shard-000000.tar" in line
    assert "| imagenet | val | native |  |  | **failed**: FileNotFoundError" in md.read_text()
    result = json.loads(md.with_suffix(".json").read_text())
    rates = {(r["dataset"], r["split"]): r.get("images_per_s") for r in result["loaders"]}
    assert rates[("imagenet", "val")] is None
    assert all(rates[key] > 0 for key in (("cifar10", "train"), ("cifar10", "test"),
                                          ("imagenet", "train")))
    assert (out / f"{md.stem}.png").is_file()


def test_chart_marks_a_failed_backend():
    import matplotlib.pyplot as plt

    rows = [{"dataset": "d", "split": "train", "backend": "native", "images_per_s": 100.0},
            {"dataset": "d", "split": "train", "backend": "dali",
             "note": "failed: RuntimeError: no"},
            {"dataset": "d", "split": "train", "backend": "ffcv", "note": "skipped: absent"}]
    fig, (left, right) = plt.subplots(1, 2)
    report._loader_panel(left, rows, "d")
    report._e2e_panel(right, [{**r, "model": "m"} for r in rows], "d")
    for ax in (left, right):
        marks = [t for t in ax.texts if t.get_text() == "failed"]
        assert len(marks) == 1 and marks[0].get_position()[0] == pytest.approx(1.0)
    plt.close(fig)
    assert report.note(rows[1]) == "**failed**: RuntimeError: no"
    assert report.note(rows[2]) == "skipped: absent"


def test_gpu_check_documents_the_users_command_line_only():
    doc = gpu_check.__doc__
    for internal in ("$OUT", "call 1", "shared/", "device call", "staged"):
        assert internal not in doc, internal
    assert "make gpu-check" in doc and "--smoke" in doc


def test_gpu_check_smoke_results_are_apart_and_a_skipped_paper_says_so(tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.setattr(gpu_check, "DEFAULT_CIFAR", tmp_path / "no-cifar")
    result = gpu_check.main(["--smoke", "--skip", "tests,bench", "--out", str(tmp_path / "o"),
                             "--work", str(tmp_path / "w")])
    assert result["parts"]["paper"]["exit"] == "skipped"
    assert "ResNet-32 paper schedule: skipped: no CIFAR-10" in capsys.readouterr().out
    [written] = (tmp_path / "o").iterdir()
    assert written.name.endswith("-smoke-gpu-check.json")
    assert gpu_check.failed(result) == []
