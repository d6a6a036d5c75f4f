"""The synthetic backend: one fixed random batch on the device, handed out len() times.

The upper bound of end-to-end benchmarks (no reading, decoding or augmentation). len() is the real
split's batches per epoch (from the manifest when data.root has one, else the dataset's size).
"""
from __future__ import annotations

import torch

from pipelines import ops
from pipelines.plan import EpochPlan
from pipelines.spec import DataConfig, num_classes
from records import format as fmt

# Images per split when there are no records to count (CIFAR val/train after the hold-out).
DEFAULT_COUNTS = {"cifar": {"train": 50000, "test": 10000}, "imagenet": {"train": 1281167,
                                                                         "val": 50000}}


def build(data_cfg: DataConfig, split: str, device, rank: int = 0, world_size: int = 1,
          seed: int = 0, eval_mode: str = "center", scale: int | None = None):
    return SyntheticLoader(data_cfg, split, device, rank, world_size, seed, eval_mode, scale)


def split_size(cfg: DataConfig, split: str) -> int:
    imagenet = cfg.dataset == "imagenet"
    source = split if imagenet else ("test" if split == "test" else "train")
    try:
        count = fmt.split_count(fmt.read_manifest(cfg.root, cfg.dataset), source)
    except FileNotFoundError:
        count = DEFAULT_COUNTS["imagenet" if imagenet else "cifar"][source]
    if imagenet or split == "test":
        return count
    return cfg.val_size if split == "val" else count - cfg.val_size


def image_shape(cfg: DataConfig, eval_mode: str, scale: int | None) -> tuple[int, ...]:
    if cfg.dataset != "imagenet":
        return (3, 32, 32)
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
        labels = torch.randint(num_classes(cfg.dataset), (batch,), generator=generator)
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
