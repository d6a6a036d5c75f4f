"""Data pipelines behind one contract: `build_loader(data_cfg, split, device, ...)`.

Every backend module (pipelines/<backend>.py, named after its data.backend key) exposes
`build(data_cfg, split, device, rank, world_size, seed, eval_mode, scale)` and returns a loader
that yields normalized (images, labels) on `device`, has `len()` and `set_epoch(epoch, start=0)`.
Backends are imported lazily so a missing FFCV/DALI only matters when it is asked for.
"""
from __future__ import annotations

import importlib

import torch

from pipelines.spec import (
    BACKENDS,
    EVAL_MODES,
    AugSpec,
    DataConfig,
    check_split,
    dataset_stats,
    num_classes,
    report_split,
    selection_split,
)
from records import datasets

__all__ = ["build_loader", "AugSpec", "DataConfig", "dataset_stats", "num_classes",
           "report_split", "selection_split"]


def check_request(data_cfg: DataConfig, split: str, rank: int, world_size: int,
                  eval_mode: str, scale: int | None) -> None:
    """Validate a loader request."""
    check_split(data_cfg.dataset, split)
    if eval_mode not in EVAL_MODES:
        raise ValueError(f"eval_mode={eval_mode!r}: expected one of {', '.join(EVAL_MODES)}")
    if split == "train" and eval_mode != "center":
        raise ValueError(f"eval_mode={eval_mode!r} applies to eval splits, not to split='train'")
    if eval_mode not in datasets.get(data_cfg.dataset).eval_modes:
        raise ValueError(f"eval_mode={eval_mode!r} is for ImageNet-style datasets; "
                         f"{data_cfg.dataset} evaluates the image as it is (eval_mode='center')")
    if eval_mode == "multiscale":
        if not isinstance(scale, int) or isinstance(scale, bool) or scale <= 0:
            raise ValueError(f"eval_mode='multiscale' needs scale=<positive int shorter side>, "
                             f"got scale={scale!r}")
    elif scale is not None:
        raise ValueError(f"scale={scale!r} is only used with eval_mode='multiscale'")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")


def backend_module(backend: str):
    """pipelines.<backend>, imported on first use (FFCV/DALI only when asked for)."""
    if backend not in BACKENDS:
        raise ValueError(f"data.backend={backend!r}: expected one of {', '.join(BACKENDS)}")
    name = f"pipelines.{backend}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name == name:  # our own module gone: a bug, not a missing dependency
            raise
        raise ImportError(f"data.backend={backend!r}: cannot import {name} ({error}); "
                          "run `make install`") from error


def build_loader(data_cfg: DataConfig, split: str, device, rank: int = 0, world_size: int = 1,
                 seed: int = 0, eval_mode: str = "center", scale: int | None = None):
    """The loader of `data_cfg.backend` for `split` (see the pipelines contract in this package)."""
    check_request(data_cfg, split, rank, world_size, eval_mode, scale)
    return backend_module(data_cfg.backend).build(data_cfg, split, torch.device(device), rank,
                                                  world_size, seed, eval_mode, scale)
