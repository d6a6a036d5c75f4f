"""Data pipelines behind one contract: `build_loader(data_cfg, split, device, ...)`.

Every backend module exposes `build(data_cfg, split, device, rank, world_size, seed, eval_mode,
scale)` and returns a loader that yields normalized (images, labels) on `device`, has `len()` and
`set_epoch(epoch, start=0)`. Backends are imported lazily so a missing FFCV/DALI only matters when
it is asked for.
"""
from __future__ import annotations

import importlib

import torch

from pipelines.spec import BACKENDS, EVAL_MODES, AugSpec, DataConfig, dataset_stats, num_classes

__all__ = ["build_loader", "canonical_split", "AugSpec", "DataConfig", "dataset_stats",
           "num_classes", "REGISTRY"]

# backend name -> "module:function"; each function has build_loader's signature.
REGISTRY = {
    "native": "pipelines.native:build",
    "ffcv": "pipelines.ffcv_loader:build",
    "dali": "pipelines.dali_loader:build",
    "torchvision": "pipelines.baseline:build",
    "synthetic": "pipelines.synthetic:build",
}
assert set(REGISTRY) == set(BACKENDS)

SPLITS = {"cifar10": ("train", "val", "test"), "cifar100": ("train", "val", "test"),
          "imagenet": ("train", "val", "test")}


def canonical_split(dataset: str, split: str) -> str:
    """The split name the records use: ImageNet has no labelled test set, so "test" is "val"."""
    if split not in SPLITS[dataset]:
        raise ValueError(f"split={split!r} for {dataset}: expected one of "
                         f"{', '.join(SPLITS[dataset])}")
    return "val" if dataset == "imagenet" and split == "test" else split


def check_request(data_cfg: DataConfig, split: str, rank: int, world_size: int,
                  eval_mode: str, scale: int | None) -> str:
    """Validate a loader request; returns the canonical split."""
    split = canonical_split(data_cfg.dataset, split)
    if eval_mode not in EVAL_MODES:
        raise ValueError(f"eval_mode={eval_mode!r}: expected one of {', '.join(EVAL_MODES)}")
    if split == "train" and eval_mode != "center":
        raise ValueError(f"eval_mode={eval_mode!r} applies to eval splits, not to split='train'")
    if eval_mode != "center" and data_cfg.dataset != "imagenet":
        raise ValueError(f"eval_mode={eval_mode!r} is ImageNet-only; {data_cfg.dataset} "
                         "evaluates the image as it is (eval_mode='center')")
    if eval_mode == "multiscale":
        if not isinstance(scale, int) or isinstance(scale, bool) or scale <= 0:
            raise ValueError(f"eval_mode='multiscale' needs scale=<positive int shorter side>, "
                             f"got scale={scale!r}")
    elif scale is not None:
        raise ValueError(f"scale={scale!r} is only used with eval_mode='multiscale'")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
    for key in ("batch_size", "eval_batch_size"):
        if getattr(data_cfg, key) < 1:
            raise ValueError(f"data.{key}={getattr(data_cfg, key)}: must be >= 1")
    return split


def build_loader(data_cfg: DataConfig, split: str, device, rank: int = 0, world_size: int = 1,
                 seed: int = 0, eval_mode: str = "center", scale: int | None = None):
    """The loader of `data_cfg.backend` for `split` (see the pipelines contract in this package)."""
    split = check_request(data_cfg, split, rank, world_size, eval_mode, scale)
    module_name, function = REGISTRY[data_cfg.backend].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(f"data.backend={data_cfg.backend!r}: cannot import {module_name} "
                          f"({error}); run `make install`") from error
    return getattr(module, function)(data_cfg, split, torch.device(device), rank, world_size,
                                     seed, eval_mode, scale)
