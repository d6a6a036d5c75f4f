"""The training loop on tiny records (CPU, seconds each): run-directory contents, checkpoints
that load with weights_only=True, SIGKILL/SIGINT and resume, NaN stop, evaluate.py, and a
2-process torchrun run."""
from __future__ import annotations

import json
import math
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from fixtures import subprocess_env, tiny_args, write_tiny_imagenet
from train import checkpoint
from train.build import Precision
from train.checkpoint import clean_state_dict, load_checkpoint, save_atomic, unwrap
from train.config import load_config
from train.files import RunError
from train.loop import TrainState, evaluate, train_one_epoch
from train.metrics import read_metrics
from train.run import main
from train.schedule import EarlyStopper, LRSchedule

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_run_directory_contents(colour_cifar, tmp_path):
    result = main(tiny_args(colour_cifar, tmp_path, "r", "run.target_error=95"))
    run = tmp_path / "r"
    assert result.status == "completed" and result.run_dir == run
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "curves.png",
                 "summary.json"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert list(run.glob("events.out.tfevents.*")), "no TensorBoard events"
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    saved = load_config(run / "config.yaml")  # the resolved config, re-loadable
    assert saved.data.root == str(colour_cifar) and saved.run.name == "r"
    assert saved.schedule.total == 2 and saved.data.batch_size == 32

    records = read_metrics(run)
    train = [r for r in records if r["kind"] == "train"]
    # every log_every=4, ckpt_every=5 iterations after the last checkpoint and at epoch ends
    # (13 iterations each)
    assert [r["iter"] for r in train] == [4, 5, 8, 10, 12, 13, 16, 18, 20, 23, 24, 26]
    assert all(math.isfinite(r["loss"]) and 0 <= r["error"] <= 100 for r in train)
    assert [r["iter"] for r in records if r["kind"] == "val"] == [13, 26]
    assert [r["which"] for r in records if r["kind"] == "test"] in (["final"], ["final", "best"])

    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 26 and summary["epochs"] == 2
    assert summary["final"]["test"]["count"] == 120 and summary["final"]["val"]["count"] == 64
    assert summary["test_top1_error"] == summary["final"]["test"]["top1_error"]
    assert summary["images_per_sec"] > 0 and summary["wall_time_s"] >= summary["train_time_s"]
    assert summary["time_to_target_s"] is not None and summary["iteration_to_target"] in (13, 26)
    # the colour classes are learnable: the train error falls well below chance (90%)
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert epochs[-1]["train_error"] < 75


def test_summary_says_where_the_wall_time_went(colour_cifar, tmp_path, monkeypatch, capsys):
    import train.run
    saves, evals, pause = [], [], 0.25
    real_save, real_evaluate = train.run.ckpt.save_atomic, train.run.evaluate

    def slow_save(obj, path, previous=None):  # a slow disk: each checkpoint file takes 0.25 s
        time.sleep(pause)
        saves.append(Path(path).name)
        real_save(obj, path, previous)

    def slow_evaluate(*args, **kwargs):
        time.sleep(pause)
        evals.append(1)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train.run.ckpt, "save_atomic", slow_save)
    monkeypatch.setattr(train.run, "evaluate", slow_evaluate)
    summary = main(tiny_args(colour_cifar, tmp_path, "t")).summary
    times = summary["time_s"]
    assert set(times) == {"train", "eval", "checkpoint", "report", "other", "setup"}
    assert times["train"] == summary["train_time_s"]
    parts = sum(times[k] for k in ("train", "eval", "checkpoint", "report", "other"))
    assert parts == pytest.approx(summary["wall_time_s"], rel=1e-6)
    # 2 evaluations in training (one per epoch), the rest in the report (final/best on test)
    assert len(evals) >= 3 and times["eval"] >= 2 * pause and times["report"] >= pause
    assert saves.count("last.pt") == 6  # iterations 5, 10, 13 (epoch end), 18, 23, 26
    # the writes ran behind training (5 iterations take ~0.5 s here): the run waited for
    # (most of) the last one and for little of the others
    assert 0.8 * pause <= times["checkpoint"] < 0.6 * pause * len(saves)
    # the evaluations' sleeps are not training time
    assert summary["wall_time_s"] - times["train"] >= pause * len(evals)
    assert times["setup"] > 0
    assert f"{summary['wall_time_s']:.0f}s (train " in capsys.readouterr().out


def test_checkpoint_writer_writes_a_snapshot_behind_the_caller(tmp_path, monkeypatch):
    gate, real_save = threading.Event(), checkpoint.save_atomic

    def gated_save(obj, path, previous=None):  # a disk that answers when the test says so
        assert gate.wait(30)
        real_save(obj, path, previous)

    monkeypatch.setattr(checkpoint, "save_atomic", gated_save)
    writer, weights, bn = checkpoint.CheckpointWriter(), torch.zeros(3), torch.nn.BatchNorm1d(3)
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    writer.save({"w": weights, "nested": [1, {"w": weights}], "model": bn.state_dict()},
                [(last, tmp_path / "last.prev.pt"), (best, None)])
    weights += 1  # the next optimizer step changes the weights in place
    bn(torch.randn(8, 3) + 5)  # and the next forward the running statistics
    assert not last.exists() and not best.exists()  # save() returned before the write
    gate.set()
    writer.wait()
    for path in (last, best):  # both hold the weights as they were at save()
        saved = load_checkpoint(path)
        assert torch.equal(saved["w"], torch.zeros(3)), path
        assert saved["nested"][0] == 1 and torch.equal(saved["nested"][1]["w"], torch.zeros(3))
        assert torch.equal(saved["model"]["running_mean"], torch.zeros(3)), path
        assert saved["model"]._metadata == bn.state_dict()._metadata  # BN's version kept

    def full_disk(obj, path, previous=None):
        raise RunError(f"cannot write {path}: no space left on the device")

    monkeypatch.setattr(checkpoint, "save_atomic", full_disk)
    writer.save({"w": weights}, [(last, None)])  # fails behind the caller ...
    with pytest.raises(RunError, match=f"cannot write {last}: no space"):
        writer.save({"w": weights}, [(last, None)])  # ... and the next save says so
    writer.wait()  # nothing more pending: the failed save was not retried
    assert torch.equal(load_checkpoint(last)["w"], torch.zeros(3))  # the one before is whole
    writer.close()


def test_checkpoints_load_weights_only_and_strip_prefixes(colour_cifar, tmp_path):
    result = main(tiny_args(colour_cifar, tmp_path, "w", "schedule.total=1"))
    ckpt = torch.load(tmp_path / "w" / "last.pt", weights_only=True)
    assert set(ckpt) >= {"model", "optimizer", "schedule", "scaler", "state", "rng", "config"}
    assert ckpt["state"]["iteration"] == 13 and ckpt["state"]["batch"] == 0
    assert ckpt["config"]["model"]["name"] == "resnet20"
    model = result.model
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, ckpt["model"][name]), name
    # DDP / torch.compile prefixes come off on load
    prefixed = {f"module._orig_mod.{k}": v for k, v in ckpt["model"].items()}
    assert clean_state_dict(prefixed).keys() == ckpt["model"].keys()
    compiled_like = torch.nn.Module()
    compiled_like._orig_mod = model
    assert unwrap(compiled_like) is model


def test_save_atomic_keeps_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic({"x": torch.ones(2)}, path)
    with pytest.raises((AttributeError, pickle.PicklingError)):  # pickle's or torch's
        save_atomic({"x": lambda: None}, path)  # not picklable: fails midway
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(2))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(colour_cifar, tmp_path, capsys):
    result = main(tiny_args(colour_cifar, tmp_path, "nan", "optim.lr=1e30", "optim.momentum=0",
                            "run.log_every=1", "run.ckpt_every=1"))
    assert result.status == "nonfinite"
    err = capsys.readouterr().err
    assert "stopping: training loss is" in err and "last good checkpoint" in err
    ckpt = load_checkpoint(tmp_path / "nan" / "last.pt")
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
    events = [r for r in read_metrics(tmp_path / "nan") if r["kind"] == "event"]
    assert events and events[0]["iter"] > ckpt["state"]["iteration"]
    assert not (tmp_path / "nan" / "summary.json").exists()


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(colour_cifar, tmp_path):
    # 480 - 224 val = 256 train images: 8 iterations per epoch, 16 in all; checkpoints at
    # iterations 3, 6, 8 (epoch end), 11, 14, 16
    args = tiny_args(colour_cifar, tmp_path, "ref", "data.val_size=224", "run.ckpt_every=3",
                     "run.log_every=1")
    victim_args = [a.replace("run.name=ref", "run.name=victim") for a in args]
    run = [PYTHON, "train/run.py"]
    reference = subprocess.Popen(run + args, cwd=ROOT, env=subprocess_env(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(run + victim_args, cwd=ROOT, env=subprocess_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "victim" / "last.pt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and victim.poll() is None:
        if last.exists() and 0 < load_checkpoint(last)["state"]["batch"] < 8:
            break  # a mid-epoch checkpoint is on disk
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(30) == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = load_checkpoint(last)["state"]
    assert killed_at["iteration"] < 16 and 0 < killed_at["batch"] < 8  # resumes mid-epoch

    resumed = subprocess.run(run + ["--resume", str(tmp_path / "victim")], cwd=ROOT,
                             env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert reference.wait(300) == 0, reference.stderr.read()[-3000:]

    ref, res = (load_checkpoint(tmp_path / name / "last.pt") for name in ("ref", "victim"))
    assert res["state"]["iteration"] == ref["state"]["iteration"] == 16
    for name, tensor in ref["model"].items():
        assert torch.allclose(tensor.double(), res["model"][name].double(), atol=1e-6,
                              rtol=0), name
    for a, b in zip(ref["optimizer"]["state"].values(), res["optimizer"]["state"].values()):
        assert torch.allclose(a["momentum_buffer"], b["momentum_buffer"], atol=1e-6, rtol=0)
    # metrics.jsonl forgot what the killed process logged after its checkpoint
    iters = [r["iter"] for r in read_metrics(tmp_path / "victim") if r["kind"] == "train"]
    assert iters == sorted(set(iters)) == list(range(1, 17))


@pytest.mark.slow
def test_sigint_checkpoints_then_exits(colour_cifar, tmp_path):
    args = tiny_args(colour_cifar, tmp_path, "int", "run.log_every=50", "run.ckpt_every=3",
                     "schedule.total=20")
    proc = subprocess.Popen([PYTHON, "train/run.py", *args], cwd=ROOT, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = tmp_path / "int" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted at iteration" in out and "--resume" in out
    state = load_checkpoint(last)["state"]
    assert 0 < state["iteration"] < 260
    # it stopped after the step it was in (logged and checkpointed there), not at the next
    # log step (every 50)
    iters = [r["iter"] for r in read_metrics(tmp_path / "int") if r["kind"] == "train"]
    assert iters[-1] == state["iteration"] and state["iteration"] < 50
    assert not (tmp_path / "int" / "summary.json").exists()


DDP_HARNESS = """
import os, sys, torch
from train.run import EXIT_CODES, main
result = main(sys.argv[1:])
torch.save(result.model.state_dict(), os.path.join(os.environ["STATE_DIR"],
           f"rank{os.environ['RANK']}.pt"))
sys.exit(EXIT_CODES[result.status])
"""


@pytest.mark.slow
def test_torchrun_two_processes_end_with_identical_weights(colour_cifar, tmp_path):
    harness = tmp_path / "harness.py"
    harness.write_text(DDP_HARNESS)
    args = tiny_args(colour_cifar, tmp_path, "ddp", "data.batch_size=16")
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(harness), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env={**subprocess_env(), "STATE_DIR": str(tmp_path)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    saved = load_checkpoint(tmp_path / "ddp" / "last.pt")["model"]
    for name, tensor in rank0.items():
        assert torch.equal(tensor, rank1[name]), f"{name} differs between ranks"
        assert torch.equal(tensor, saved[name]), f"{name} differs from rank 0's checkpoint"
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    # 416 train images over 2 ranks of batch 16 -> 13 iterations per epoch, 2 epochs
    assert summary["world_size"] == 2 and summary["global_batch"] == 32
    assert summary["iterations"] == 26
    # eval shares are disjoint and cover the splits: counts summed over ranks
    assert summary["final"]["val"]["count"] == 64 and summary["final"]["test"]["count"] == 120


def test_early_stopper_counts_evaluations_without_improvement():
    stopper = EarlyStopper(patience=2)
    assert [stopper.step(e) for e in (50.0, 40.0, 45.0, 40.0)] == [True, True, False, False]
    assert stopper.should_stop
    assert stopper.step(39.0) and not stopper.should_stop
    never = EarlyStopper(patience=None)
    for e in range(10):
        never.step(float(e))
    assert not never.should_stop


def test_early_stopping_stops_at_the_first_eval_beyond_patience(colour_cifar, tmp_path):
    result = main(tiny_args(colour_cifar, tmp_path, "es", "run.patience=0", "schedule.total=4"))
    errors = [r["top1_error"] for r in read_metrics(tmp_path / "es") if r["kind"] == "val"]
    first_worse = next((i for i in range(1, len(errors)) if errors[i] >= min(errors[:i])), None)
    summary = json.loads((tmp_path / "es" / "summary.json").read_text())
    if first_worse is None:  # every epoch improved: nothing to stop for
        assert result.status == "completed" and len(errors) == 4
    else:
        assert result.status == "early_stopped" and len(errors) == first_worse + 1
        assert summary["status"] == "early_stopped"
    assert summary["best"]["val"]["top1_error"] == min(errors)


def test_plateau_schedule_follows_val_error(colour_cifar, tmp_path):
    main(tiny_args(colour_cifar, tmp_path, "pl", "schedule.kind=plateau", "schedule.total=3",
                   "schedule.plateau_patience=0", "schedule.plateau_threshold=0.5"))
    records = read_metrics(tmp_path / "pl")
    errors = [r["top1_error"] for r in records if r["kind"] == "val"]
    lrs = [r["lr"] for r in records if r["kind"] == "epoch"]
    expected, lr, best = [], 0.1, math.inf
    for error in errors:  # ReduceLROnPlateau(patience=0, threshold 0.5 points, abs)
        if error < best - 0.5:
            best = error
        else:
            lr *= 0.1
        expected.append(lr)
    assert lrs == pytest.approx(expected)


def test_loop_has_no_backend_knowledge(colour_cifar):
    """train_one_epoch/evaluate accept any object with the loader contract."""
    from train.distributed import DistEnv
    from train.loop import LoopSettings, RunHooks
    from train.meter import Meter
    from train.step import TrainStep

    class ListLoader:
        def __init__(self, batches):
            self.batches, self.start = batches, 0

        def __len__(self):
            return len(self.batches)

        def set_epoch(self, epoch, start=0):
            self.start = start

        def __iter__(self):
            yield from self.batches[self.start:]

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(10, (8,), generator=g))
               for _ in range(3)]
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    schedule = LRSchedule(load_config(None, ["schedule.unit=iter", "schedule.total=100",
                                             "schedule.milestones=[1]"]).schedule, 0.01, 3)
    precision = Precision(None, torch.contiguous_format, "cpu")
    env = DistEnv(0, 0, 1, torch.device("cpu"))
    state = TrainState(batch=1)
    settings = LoopSettings(total_iters=100, log_every=10, ckpt_every=0, progress=False)
    logs = []
    step = TrainStep(model, opt, precision, env.device)
    result = train_one_epoch(step, ListLoader(batches), schedule, state, settings, Meter(env),
                             RunHooks(on_log=logs.append))
    assert state.iteration == 2 and state.batch == 3 and state.images == 16
    # iteration 0 ran at lr 0.01, iteration 1 (past the milestone) at 0.001
    assert len(logs) == 1 and logs[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(0.001)
    assert math.isfinite(result["loss"]) and not result["stopped"]
    metrics = evaluate(model, ListLoader(batches), precision, env)
    assert metrics["count"] == 24 and 0 <= metrics["top1_error"] <= 100
    assert metrics["top5_error"] <= metrics["top1_error"]


def test_evaluate_protocols_on_tiny_imagenet(tmp_path):
    """center/tencrop/multiscale through evaluate.py with a (random) ResNet-18 in a fake run."""
    from models import build_model
    from train.config import dump_config
    from train.config import load_config as load
    from train.evaluate import main as evaluate_main

    records = write_tiny_imagenet(tmp_path)
    cfg = load("configs/resnet34_B.yaml", [f"data.root={records}", "data.backend=native",
                                           "model.name=resnet18", "run.device=cpu",
                                           "data.num_workers=0", "data.eval_batch_size=2",
                                           "data.aug.eval_scales=[64,96]",
                                           "data.aug.eval_resize=72", "data.aug.crop=64",
                                           "run.amp=none"])  # the check below is fp32
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(cfg))
    torch.manual_seed(0)
    model = build_model("resnet18", 1000).eval()
    save_atomic({"model": model.state_dict()}, run / "best.pt")

    results = {mode: evaluate_main([str(run), "--mode", mode])
               for mode in ("center", "tencrop", "multiscale")}
    for mode, result in results.items():  # ImageNet reports val: there is no test set
        assert result["count"] == 3 and result["split"] == "val"
        assert (run / f"eval_{mode}_val.json").is_file()
    assert set(results["multiscale"]["per_scale"]) == {"64", "96"}
    # multiscale scores are the mean of the per-scale softmax: check the loss by hand
    from pipelines import build_loader
    probs = 0
    for scale in (64, 96):
        loader = build_loader(cfg.data, "val", "cpu", eval_mode="multiscale", scale=scale)
        with torch.no_grad():
            out = [(model(x).softmax(1), y) for x, y in loader]
        probs = probs + torch.cat([p for p, _ in out]) / 2
        labels = torch.cat([y for _, y in out])
    nll = -probs.gather(1, labels[:, None]).log().mean().item()
    assert results["multiscale"]["loss"] == pytest.approx(nll, rel=1e-4)
