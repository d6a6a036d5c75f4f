"""Data pipelines behind one contract: `build_loader(data_cfg, split, device, ...)`.

`build_loader` turns its arguments into one `LoaderRequest` (pipelines/request.py), checked
once, and hands it to the backend module named by data.backend (pipelines/<backend>.py), whose
`build(request)` returns a loader (a plan.PlannedLoader) that yields normalized (images, labels)
on the device, has `len()` and `set_epoch(epoch, start=0)`. Backends are imported lazily so a
missing FFCV/DALI only matters when it is asked for.
"""
from __future__ import annotations

import importlib

from pipelines.request import LoaderError, LoaderRequest
from pipelines.spec import (
    BACKENDS,
    AugSpec,
    DataConfig,
    class_names,
    dataset_stats,
    num_classes,
    report_split,
    selection_split,
)

__all__ = ["build_loader", "AugSpec", "DataConfig", "LoaderError", "LoaderRequest", "class_names",
           "dataset_stats", "num_classes", "report_split", "selection_split"]


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
    request = LoaderRequest(data_cfg, split, device, rank, world_size, seed, eval_mode, scale)
    return backend_module(data_cfg.backend).build(request)
