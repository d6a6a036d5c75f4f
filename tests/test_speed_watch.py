"""A run watches its own speed: a steady step time that drifts by more than 20%, or a
torch.compile recompilation after warm-up, is said once with the numbers (and the reason)."""
from __future__ import annotations

import json
import time

import pytest
import torch

import train.meter
from fixtures import tiny_args, write_tiny_cifar
from train.meter import SpeedWatch
from train.metrics import read_metrics
from train.run import main
from train.step import TrainStep


def test_drift_is_said_once_when_it_lasts():
    """Blocks of 4 one-iteration intervals: the first steady block is the baseline; one slow
    block is a blip; two in a row are a drift, said once with the numbers."""
    said = []
    watch = SpeedWatch(say=said.append, window=4)
    for i in range(1, 4):
        watch.interval(i, 50.0)  # warm-up intervals are ignored
    watch.warm()
    times = [10, 10.2, 9.8, 10] + [10.1, 10.5, 11, 10.8] + [15, 15, 15, 15] + [10] * 4
    for i, ms in enumerate(times, start=4):
        watch.interval(i, ms)
    assert watch.baseline_ms == 10 and said == []  # a blip of one block is not reported
    for i, ms in enumerate([15.0] * 8, start=20):
        watch.interval(i, ms)
    assert len(said) == 1 and watch.drift["ratio"] == pytest.approx(1.5)
    assert "rose 50% by iteration 27: 10.00 -> 15.00 ms/step; no recompile" in said[0]
    for i in range(28, 40):
        watch.interval(i, 30.0)
    assert len(said) == 1
    watch.close()


def test_a_resumed_watch_keeps_its_baseline_and_reads_older_checkpoints():
    """The state holds the baseline block once; a checkpoint written before 2026-12-06 kept its
    step time alone (`baseline_ms`), and still resumes with it."""
    watch = SpeedWatch(say=lambda _: None, window=4)
    watch.warm()
    for i in range(1, 9):
        watch.interval(i, 10.0 if i <= 4 else 12.0, gpu_step_ms=9.0, data_wait=0.01)
    state = watch.state_dict()
    assert "baseline_ms" not in state and state["baseline"]["step_ms"] == 10.0
    resumed = SpeedWatch(say=lambda _: None, window=4)
    resumed.load_state_dict(state)
    assert resumed.baseline == watch.baseline and resumed.blocks == [12.0]
    early = SpeedWatch(say=lambda _: None, window=4)  # saved before its first steady block
    early.load_state_dict(SpeedWatch().state_dict())
    assert early.baseline_ms is None
    older = SpeedWatch(say=lambda _: None, window=4)
    older.load_state_dict({"baseline_ms": 10.0, "blocks": [12.0], "drift": None})
    assert older.baseline_ms == 10.0 and older.blocks == [12.0]


def test_a_drift_says_what_moved_beside_it(monkeypatch):
    """The GPU's step time, the data wait and the host's load average of the baseline block
    and of the drifted one are said with the drift and kept in its record."""
    loads = iter([1.0] * 4 + [3.0] * 8)
    monkeypatch.setattr(train.meter, "load_average", lambda: next(loads))
    said = []
    watch = SpeedWatch(say=said.append, window=4)
    watch.warm()
    for i in range(1, 5):
        watch.interval(i, 10.0, gpu_step_ms=9.0, data_wait=0.01)
    for i in range(5, 13):
        watch.interval(i, 15.0, gpu_step_ms=14.5, data_wait=0.02)
    assert len(said) == 1
    assert said[0].endswith("; beside it: GPU step 9.00 -> 14.50 ms, data wait 1% -> 2%, load "
                            "average 1.0 -> 3.0")
    assert watch.drift["before"] == {"step_ms": 10.0, "gpu_step_ms": 9.0, "data_wait": 0.01,
                                     "load": 1.0}
    assert watch.drift["now"]["gpu_step_ms"] == 14.5
    watch.close()


def test_a_drift_without_gpu_times_says_the_rest(monkeypatch):
    monkeypatch.setattr(train.meter, "load_average", lambda: None)  # an OS without one
    said = []
    watch = SpeedWatch(say=said.append, window=2)
    watch.warm()
    for i, ms in enumerate([10, 10, 20, 20, 20, 20], start=1):
        watch.interval(i, float(ms), data_wait=0.5 if ms == 20 else 0.0)
    assert len(said) == 1 and said[0].endswith("; beside it: data wait 0% -> 50%")
    watch.close()


def test_recompile_after_warm_up_is_said_with_its_reason():
    said = []
    watch = SpeedWatch(say=said.append)
    model = torch.compile(torch.nn.Linear(4, 3), backend="eager")
    model(torch.randn(2, 4))
    compiles = watch.compiles
    assert compiles >= 1 and said == []
    watch.warm()
    watch.iteration = 7
    with torch.no_grad():
        model(torch.randn(2, 4))  # grad mode differs: a guard fails, dynamo compiles again
    watch.close()
    assert watch.compiles > compiles
    assert len(said) == 1 and "compiled again at iteration 7" in said[0]
    assert watch.recompiles[0]["reason"] != "unknown"
    model(torch.randn(5, 4))  # after close: no longer watched
    assert len(said) == 1


def test_a_slowed_step_is_reported_in_the_log_and_the_summary(tmp_path, monkeypatch):
    records = write_tiny_cifar(tmp_path / "data")
    real = TrainStep.__call__

    def slow_after(self, images, labels):
        """Steps whose time the sleep dominates (block medians of a busy CI machine stay well
        inside 20%), far slower from epoch 2 (13 iterations an epoch, one block) on."""
        real(self, images, labels)
        time.sleep(0.1 if self.calls <= 26 else 0.8)

    monkeypatch.setattr(TrainStep, "__call__", slow_after)
    result = main(tiny_args(records, tmp_path, "slow", "schedule.total=4", "run.log_every=1",
                            "run.ckpt_every=0"))
    speed = result.summary["speed"]
    assert speed["drift"] is not None and speed["drift"]["ratio"] > 1.2
    assert speed["drift"]["iteration"] == 52  # epochs 2 and 3 both slow: said at the second
    events = [r["message"] for r in read_metrics(tmp_path / "slow") if r["kind"] == "event"]
    drifts = [m for m in events if m.startswith("speed: steady step time rose")]
    assert len(drifts) == 1 and "; beside it: data wait 0% -> 0%, load average" in drifts[0]
    summary = json.loads((tmp_path / "slow" / "summary.json").read_text())
    assert summary["speed"]["baseline_step_ms"] < summary["speed"]["last_step_ms"]
    assert summary["speed"]["drift"]["now"]["step_ms"] == pytest.approx(speed["drift"]["now_ms"])


@pytest.mark.slow
def test_compiled_cpu_run_does_not_recompile_after_warm_up(tmp_path):
    """Three epochs with evaluation after each and an lr milestone, torch.compile on the CPU:
    compiles in the first epoch and its evaluation only."""
    records = write_tiny_cifar(tmp_path / "data")
    result = main(tiny_args(records, tmp_path, "compiled", "run.compile=default",
                            "schedule.total=3", "schedule.milestones=[2]"))
    speed = result.summary["speed"]
    assert result.status == "completed" and speed["compiles"] >= 1
    assert speed["recompiles_after_warmup"] == []
