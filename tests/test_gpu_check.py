"""`tools/gpu_check.py --smoke`: the CPU dry run of the GPU script runs its parts (CUDA tests, the
paper schedule's command line) and writes what the GPU run would. Its benchmark part is the smoke
benchmark with `bench_arguments`, which tests/test_bench.py runs: skipped here, not run twice."""
from __future__ import annotations

import json

import pytest

from fixtures import write_tiny_cifar
from tools.gpu_check import main


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_gpu_check_dry_run_on_cpu(tmp_path):
    cifar = write_tiny_cifar(tmp_path / "records", n_train=80, n_test=40)
    out = tmp_path / "out"
    result = main(["--smoke", "--skip", "bench", "--cifar", str(cifar), "--out", str(out),
                   "--work", str(tmp_path / "work")])
    parts = result["parts"]
    assert set(parts) == {"tests", "paper"}
    assert all(part["exit"] == 0 for part in parts.values()), {
        name: part.get("tail") for name, part in parts.items()}
    stem = parts["paper"]["results"].removesuffix("-resnet32")
    run = out / parts["paper"]["results"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 24 and "data_wait_fraction" in summary
    assert (run / "curves.png").is_file()
    assert 0 <= parts["paper"]["test_error"] <= 100
    saved = json.loads((out / f"{stem}-gpu-check.json").read_text())
    assert saved["parts"]["paper"]["exit"] == 0 and saved["smoke"] is True
