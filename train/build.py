"""What a run is built from, in one place: the model from the config, the precision settings
(autocast, grad scaler, memory format), and a trained run's model read back from disk. Used by
train/run.py, train/evaluate.py and the tools that read runs."""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models import build_model
from pipelines import num_classes
from train import checkpoint as ckpt
from train.config import Config, ConfigError, load_config

CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def cpu_bf16() -> str | None:
    """The instruction set this CPU computes bf16 with ("AMX", "AVX512_BF16"), or None when it
    has neither and bf16 would be emulated (slower than fp32). Linux reads /proc/cpuinfo's
    flags; elsewhere torch's own CPU probe, when this torch has it."""
    try:
        flags = set(CPUINFO.read_text().split())
    except OSError:
        probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        return "AVX512_BF16" if probe is not None and probe() else None
    if "amx_bf16" in flags:
        return "AMX"
    return "AVX512_BF16" if "avx512_bf16" in flags else None


@dataclass(frozen=True)
class Precision:
    """How a run computes on its device; `label` says which, and why, for the run header."""

    amp_dtype: torch.dtype | None  # autocast dtype; None = fp32
    memory_format: torch.memory_format
    device_type: str
    label: str = "fp32"

    def autocast(self, cache: bool = True):
        """A fresh autocast context for one forward pass (cache=False inside a CUDA-graph
        capture: cached casts would outlive it)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.amp_dtype, cache_enabled=cache)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16 only (a no-op otherwise)."""
        return torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)


def autocast_dtype(amp: str, device: torch.device) -> tuple[torch.dtype | None, str]:
    """(autocast dtype or None, label) for run.amp on `device`. auto: bf16 on CUDA, and on a
    CPU that computes bf16 natively (bench/results/cpu-recipe-2026-12-04.md); fp32 elsewhere.
    fp16 autocast is CUDA's: a CPU runs it in fp32."""
    if amp == "none":
        return None, "fp32 (run.amp=none)"
    if device.type == "cuda":
        dtype = torch.float16 if amp == "fp16" else torch.bfloat16
        return dtype, f"{'fp16' if amp == 'fp16' else 'bf16'} autocast (CUDA)"
    if amp == "fp16":
        return None, "fp32 (run.amp=fp16 is CUDA-only)"
    isa = cpu_bf16()
    if isa is not None:
        return torch.bfloat16, f"bf16 autocast ({isa})"
    if amp == "bf16":
        return torch.bfloat16, "bf16 autocast (emulated: this CPU has no AVX512_BF16 or AMX)"
    return None, "fp32 (this CPU has no AVX512_BF16 or AMX)"


def precision(cfg: Config, device: torch.device) -> Precision:
    amp, label = autocast_dtype(cfg.run.amp, device)
    if cfg.data.dtype == "bfloat16" and amp is not torch.bfloat16:
        raise ConfigError(f"data.dtype=bfloat16 needs a run that autocasts in bf16; here "
                          f"device={device}, run.amp={cfg.run.amp}: {label}")
    # channels_last pays on CPU too (bench/results/cpu-2c-2026-12-02.md, interleaved rounds on a
    # quiet 2-core machine): ResNet-32 1.28x at batch 128, ResNet-34 1.12x at 224 px.
    layout = torch.channels_last if cfg.data.channels_last else torch.contiguous_format
    return Precision(amp, layout, device.type, label)


def model_for(cfg: Config, device: torch.device) -> nn.Module:
    """The config's model, freshly initialised (torch's RNG), on `device` in its layout."""
    model = build_model(cfg.model.name, num_classes(cfg.data),
                        shortcut=cfg.model.shortcut,
                        zero_init_residual=cfg.model.zero_init_residual,
                        stride_in_1x1=cfg.model.stride_in_1x1)
    return model.to(device, memory_format=precision(cfg, device).memory_format)


def load_run(run_dir: str | Path, checkpoint: str = "best.pt", overrides=(),
             device: str | None = None) -> tuple[Config, nn.Module]:
    """(config, model in eval mode) of a finished or running run: RUN_DIR/config.yaml with
    `key=value` overrides, weights from RUN_DIR/<checkpoint>. device: None = run.device."""
    from train.distributed import resolve_device

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml", list(overrides))
    if device is not None:
        cfg.run.device = device
    model = model_for(cfg, resolve_device(cfg.run.device))
    ckpt.load_model_state(model, ckpt.load_checkpoint(run_dir / checkpoint)["model"])
    return cfg, model.eval()
