"""run.amp on CPU: auto autocasts in bf16 where the CPU computes bf16 natively (AVX512_BF16 or
AMX) and runs fp32 elsewhere. The detection is monkeypatched, so both branches run on any
machine."""
from __future__ import annotations

import json

import pytest
import torch

from fixtures import tiny_args
from train import build
from train.config import ConfigError, load_config
from train.evaluate import main as evaluate_main
from train.run import main

CPU = torch.device("cpu")


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """Write a fake /proc/cpuinfo with the given flags; cpu_bf16's cache cleared around it."""
    def write(flags: str):
        path = tmp_path / "cpuinfo"
        path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flags}\n\n"
                        f"processor\t: 1\nflags\t\t: fpu sse2 avx2 {flags}\n")
        monkeypatch.setattr(build, "CPUINFO", path)
        build.cpu_bf16.cache_clear()
        return path
    yield write
    build.cpu_bf16.cache_clear()


@pytest.mark.parametrize("flags, isa", [("avx512f avx512_bf16", "AVX512_BF16"),
                                        ("avx512_bf16 amx_tile amx_bf16", "AMX"),
                                        ("avx512f avx512bw", None), ("", None)])
def test_cpu_bf16_reads_the_cpuinfo_flags(cpuinfo, flags, isa):
    cpuinfo(flags)
    assert build.cpu_bf16() == isa


def test_cpu_bf16_without_cpuinfo_asks_torch(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "CPUINFO", tmp_path / "missing")
    for answer, isa in ((True, "AVX512_BF16"), (False, None)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda a=answer: a,
                            raising=False)
        build.cpu_bf16.cache_clear()
        assert build.cpu_bf16() == isa
    build.cpu_bf16.cache_clear()


def prec(monkeypatch, isa, *overrides, device=CPU):
    monkeypatch.setattr(build, "cpu_bf16", lambda: isa)
    return build.precision(load_config("configs/resnet20.yaml", list(overrides)), device)


@pytest.mark.parametrize("isa", ["AVX512_BF16", "AMX"])
def test_auto_is_bf16_on_a_cpu_with_native_bf16(monkeypatch, isa):
    p = prec(monkeypatch, isa)
    assert p.amp_dtype is torch.bfloat16 and p.label == f"bf16 autocast ({isa})"
    with p.autocast():
        out = torch.nn.Linear(4, 2)(torch.ones(3, 4))
    assert out.dtype is torch.bfloat16
    assert not p.grad_scaler().is_enabled()


def test_auto_is_fp32_on_a_cpu_without(monkeypatch):
    p = prec(monkeypatch, None)
    assert p.amp_dtype is None and "no AVX512_BF16 or AMX" in p.label
    with p.autocast():
        assert torch.nn.Linear(4, 2)(torch.ones(3, 4)).dtype is torch.float32


@pytest.mark.parametrize("isa", ["AVX512_BF16", None])
def test_none_is_fp32_and_fp16_is_cuda_only(monkeypatch, isa):
    none = prec(monkeypatch, isa, "run.amp=none")
    assert none.amp_dtype is None and none.label == "fp32 (run.amp=none)"
    fp16 = prec(monkeypatch, isa, "run.amp=fp16")
    assert fp16.amp_dtype is None and "CUDA-only" in fp16.label


def test_explicit_bf16_on_a_cpu_without_native_bf16_is_emulated(monkeypatch):
    p = prec(monkeypatch, None, "run.amp=bf16")
    assert p.amp_dtype is torch.bfloat16 and "emulated" in p.label


@pytest.mark.parametrize("isa", ["AVX512_BF16", None])
def test_cuda_is_unchanged_auto_and_bf16_autocast_bf16(monkeypatch, isa):
    cuda = torch.device("cuda")  # only the decision: nothing runs on it
    for amp, dtype in (("auto", torch.bfloat16), ("bf16", torch.bfloat16),
                       ("fp16", torch.float16), ("none", None)):
        p = prec(monkeypatch, isa, f"run.amp={amp}", device=cuda)
        assert p.amp_dtype is dtype and p.device_type == "cuda", amp


def test_bf16_images_need_a_bf16_run(monkeypatch):
    assert prec(monkeypatch, "AMX", "data.dtype=bfloat16").amp_dtype is torch.bfloat16
    with pytest.raises(ConfigError, match=r"data.dtype=bfloat16 .*run.amp=auto: fp32"):
        prec(monkeypatch, None, "data.dtype=bfloat16")
    with pytest.raises(ConfigError, match=r"run.amp=none"):
        prec(monkeypatch, "AMX", "data.dtype=bfloat16", "run.amp=none")


@pytest.mark.parametrize("isa, label", [("AVX512_BF16", "bf16 autocast (AVX512_BF16)"),
                                        (None, "fp32 (this CPU has no AVX512_BF16 or AMX)")])
def test_a_cpu_run_says_its_precision_and_evaluate_agrees(colour_cifar, tmp_path, monkeypatch,
                                                         capsys, isa, label):
    """A tiny run in each branch: its header names the precision, training learns the colour
    classes, and evaluate.py on best.pt prints the test error the run reported."""
    monkeypatch.setattr(build, "cpu_bf16", lambda: isa)
    extra = ["data.dtype=bfloat16"] if isa else []
    result = main(tiny_args(colour_cifar, tmp_path, "r", *extra))
    assert result.status == "completed"
    assert label in capsys.readouterr().out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["final"]["val"]["top1_error"] < 90  # 10 classes: chance is 90%
    again = evaluate_main([str(tmp_path / "r")])  # best.pt, in the run's precision
    assert again["top1_error"] == summary["best"]["test"]["top1_error"]


def test_cpu_recipe_benchmark_writes_its_table(tmp_path):
    """tools/benchmark/cpu_recipe.py, eager only and tiny: both precisions from the same weights,
    timed against fp32 eager, recorded as JSON and Markdown."""
    from tools.benchmark import cpu_recipe

    threads = torch.get_num_threads()
    result = cpu_recipe.main(["--batch", "8", "--steps", "1", "--warmup", "1", "--rounds", "2",
                              "--modes=", "--threads", "1", "--out", str(tmp_path),
                              "--name", "r"])
    torch.set_num_threads(threads)
    fp32, bf16 = result["rows"]
    assert (fp32["name"], bf16["name"]) == ("fp32 eager", "bf16 eager")
    assert fp32["vs_fp32_eager"] == 1.0 and fp32["grad_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert 0.98 < bf16["grad_cosine"] < 1.0 and bf16["loss_rel_diff"] < 1e-2  # bf16, not fp32
    assert all(len(r["rounds_images_per_s"]) == 2 and r["images_per_s"] > 0 for r in (fp32, bf16))
    assert json.loads((tmp_path / "r.json").read_text())["rows"] == result["rows"]
    assert "| bf16 eager |" in (tmp_path / "r.md").read_text()
