"""The main job on the real CIFAR-10 (marked slow; skipped when the tarball is absent).

configs/quickstart.yaml: ResNet-20, batch 128, lr 0.1 for 700 iterations then 0.01 for 200
(900 iterations = 2.6 epochs of the 45k train split), about 5 minutes on 2 free CPU cores. The
accuracy floor was measured beforehand (ACCURACY_FLOOR). FFCV and DALI run the first 300
iterations of the same job and must bring the training loss down clearly.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from train.metrics import read_metrics
from train.run import main

ROOT = Path(__file__).resolve().parents[1]

# Measured on this machine (native backend, 1 thread, 2 shared cores): 67.47% test accuracy with
# run.seed=0, 70.35% with run.seed=1. The floor leaves room for seeds and for thread counts,
# which change the float summation order and so the whole trajectory.
ACCURACY_FLOOR = 60.0


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def job(records, out, name, *extra):
    """configs/quickstart.yaml (the README's main job) on the converted records."""
    return ["configs/quickstart.yaml", f"data.root={records}", f"run.out_dir={out}",
            f"run.name={name}", f"run.threads={cores()}", "run.device=cpu", *extra]


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_resnet20_learns_cifar10_native(cifar10_records, tmp_path):
    result = main(job(cifar10_records, tmp_path, "native", "data.backend=native"))
    summary = result.summary
    accuracy = 100 - summary["test_top1_error"]
    print(f"ResNet-20 CIFAR-10, 900 iterations: test accuracy {accuracy:.2f}%, "
          f"{summary['images_per_sec']:.0f} img/s, {summary['wall_time_s']:.0f} s")
    assert summary["final"]["test"]["count"] == 10000
    assert summary["final"]["val"]["count"] == 5000
    assert accuracy >= ACCURACY_FLOOR


def loss_falls(run_dir, iterations):
    losses = [r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"]
    first, last = losses[0], sum(losses[-2:]) / 2
    assert len(losses) == iterations // 50
    assert first > 2.0 and last < 1.75 and last < first - 0.5, losses


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("backend", [pytest.param("ffcv", marks=pytest.mark.ffcv),
                                     pytest.param("dali", marks=pytest.mark.dali)])
def test_record_backends_train(cifar10_records, tmp_path, backend):
    main(job(cifar10_records, tmp_path, backend, f"data.backend={backend}", "schedule.total=300",
             "schedule.milestones=[]"))
    loss_falls(tmp_path / backend, 300)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_make_quickstart_converts_then_trains(cifar10_tar, tmp_path):
    """The README's main job in one command: records missing -> converted, then trained, and
    the paths of the curves and the summary printed (20 iterations here, not 900)."""
    data, runs = tmp_path / "records", tmp_path / "runs"
    args = (f"schedule.total=20 schedule.milestones=[] run.device=cpu run.out_dir={runs} "
            "run.name=qs run.log_every=10")
    proc = subprocess.run(["make", "quickstart", f"DATA={data}", f"CIFAR10_SRC={cifar10_tar}",
                           f"ARGS={args}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=850)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (data / "cifar10" / "manifest.json").is_file()
    assert f"curves:  {runs / 'qs' / 'curves.png'}" in proc.stdout
    assert f"summary: {runs / 'qs' / 'summary.json'}" in proc.stdout
    assert (runs / "qs" / "curves.png").is_file() and (runs / "qs" / "summary.json").is_file()
