"""The synthetic backend: one fixed random batch on the device, handed out len() times.

The upper bound of end-to-end benchmarks (no reading, decoding or augmentation). len() is the real
split's batches per epoch (from the manifest when data.root has one, else the dataset's size).
"""
from __future__ import annotations

import torch

from pipelines import ops
from pipelines.plan import EpochPlan
from pipelines.spec import DataConfig, num_classes
from records import datasets
from records import format as fmt


def build(data_cfg: DataConfig, split: str, device, rank: int = 0, world_size: int = 1,
          seed: int = 0, eval_mode: str = "center", scale: int | None = None):
    return SyntheticLoader(data_cfg, split, device, rank, world_size, seed, eval_mode, scale)


def split_size(cfg: DataConfig, split: str) -> int:
    """Samples of `split`: from the manifest at cfg.root, else from the full dataset's counts."""
    entry = datasets.get(cfg.dataset)
    source = entry.stored_split(split)
    try:
        count = fmt.split_count(fmt.read_manifest(cfg.root, cfg.dataset), source)
    except FileNotFoundError:
        if entry.counts is None:  # nothing to count without records
            raise
        count = entry.counts[source]
    return entry.split_count(split, count, cfg.val_size)


def image_shape(cfg: DataConfig, eval_mode: str, scale: int | None) -> tuple[int, ...]:
    entry = datasets.get(cfg.dataset)
    if entry.family == "cifar":
        return (3, *entry.image_size)
    crop = cfg.aug.crop
    if eval_mode == "tencrop":
        return (10, 3, crop, crop)
    if eval_mode == "multiscale":
        return (3, scale, scale * 4 // 3)  # a typical 4:3 landscape photo
    return (3, crop, crop)


class SyntheticLoader:
    def __init__(self, cfg: DataConfig, split: str, device, rank: int, world_size: int,
                 seed: int, eval_mode: str, scale: int | None):
        train = split == "train"
        batch = 1 if eval_mode == "multiscale" else (cfg.batch_size if train
                                                     else cfg.eval_batch_size)
        self.plan = EpochPlan(split_size(cfg, split), batch, rank, world_size, seed,
                              shuffle=train, drop_last=train)
        device = torch.device(device)
        generator = ops.make_generator("cpu", seed, rank, 0x5717)
        images = torch.randn(batch, *image_shape(cfg, eval_mode, scale), generator=generator)
        labels = torch.randint(num_classes(cfg), (batch,), generator=generator)
        flat = images.flatten(0, 1) if images.dim() == 5 else images
        flat = ops.finish(flat.to(device), ops.DTYPES[cfg.dtype], cfg.channels_last)
        self.images = flat.unflatten(0, images.shape[:2]) if images.dim() == 5 else flat
        self.labels = labels.to(device)

    def __len__(self) -> int:
        return len(self.plan)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.plan.set_epoch(epoch, start)

    def __iter__(self):
        for _ in self.plan.batches():
            yield self.images, self.labels
