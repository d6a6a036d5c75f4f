"""Every run says where its time went: the data-wait fraction is high behind a slow loader,
near zero behind the synthetic one, and lands in metrics.jsonl and summary.json."""
from __future__ import annotations

import json
import time

import pytest
import torch

from fixtures import tiny_args
from models import build_model
from pipelines import DataConfig, build_loader
from train.build import Precision
from train.config import load_config
from train.distributed import DistEnv
from train.loop import LoopSettings, RunHooks, TrainState, data_verdict, train_one_epoch
from train.meter import Meter
from train.metrics import read_metrics
from train.run import main
from train.schedule import LRSchedule
from train.step import TrainStep


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


class SlowLoader:
    """The synthetic loader, `delay` seconds late with every batch."""

    def __init__(self, loader, delay: float):
        self.loader, self.delay = loader, delay

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, epoch, start=0):
        self.loader.set_epoch(epoch, start)

    def __iter__(self):
        for batch in self.loader:
            time.sleep(self.delay)
            yield batch


def run_epoch(loader, model, iters: int = 6) -> tuple[TrainState, list[dict]]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    schedule = LRSchedule(load_config(None, ["schedule.unit=iter", "schedule.total=100"])
                          .schedule, 0.01, len(loader))
    state, logs = TrainState(), []
    env = DistEnv(0, 0, 1, torch.device("cpu"))
    step = TrainStep(model, opt, Precision(None, torch.contiguous_format, "cpu"), env.device)
    train_one_epoch(step, loader, schedule, state,
                    LoopSettings(total_iters=iters, log_every=3, ckpt_every=0, progress=False),
                    Meter(env), RunHooks(on_log=logs.append))
    return state, logs


def synthetic_loader():
    cfg = DataConfig(dataset="cifar10", root="/nonexistent", backend="synthetic", batch_size=16,
                     channels_last=False)
    return build_loader(cfg, "train", "cpu")


def test_slow_loader_shows_a_high_data_wait_and_synthetic_near_zero():
    torch.manual_seed(0)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    run_epoch(synthetic_loader(), linear)  # first steps in a process pay one-off costs
    state, logs = run_epoch(SlowLoader(synthetic_loader(), delay=0.1), linear)
    assert [r["data_wait"] for r in logs] and all(r["data_wait"] > 0.5 for r in logs)
    assert state.data_wait / state.train_time > 0.5
    assert data_verdict(state.data_wait / state.train_time).startswith("data-bound")

    resnet = build_model("resnet20", 10)
    run_epoch(synthetic_loader(), resnet)
    state, logs = run_epoch(synthetic_loader(), resnet)
    assert all(0 <= r["data_wait"] < 0.1 for r in logs)
    assert state.data_wait / state.train_time < 0.1
    assert all(r["step_ms"] > 0 and r["img_per_s"] > 0 for r in logs)
    assert data_verdict(state.data_wait / state.train_time).startswith("not data-bound")


def test_run_reports_data_wait_in_metrics_and_summary(colour_cifar, tmp_path, capsys):
    main(tiny_args(colour_cifar, tmp_path, "w", "schedule.total=1"))
    train = [r for r in read_metrics(tmp_path / "w") if r["kind"] == "train"]
    assert train and all(0 <= r["data_wait"] <= 1 and r["step_ms"] > 0 for r in train)
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert 0 <= summary["data_wait_fraction"] <= 1
    assert "of the time waiting on the loader" in summary["data_verdict"]
    assert summary["images_per_sec"] > 0
