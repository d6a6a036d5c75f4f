"""One backend-neutral description of the data and its augmentation.

Every backend (native, ffcv, dali, torchvision baseline) reads these dataclasses and nothing else;
train/config.py nests them, so YAML keys are `data.*` and `data.aug.*`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from records.check import VERIFY_MODES

DATASETS = ("cifar10", "cifar100", "imagenet")
BACKENDS = ("native", "ffcv", "dali", "torchvision", "synthetic")
EVAL_MODES = ("center", "tencrop", "multiscale")
# The splits a loader serves. CIFAR: train/val are the 45k/5k hold-out of the official train
# set, test is the official test set. ImageNet has no labelled test set: train and val only.
SPLITS = {"cifar10": ("train", "val", "test"), "cifar100": ("train", "val", "test"),
          "imagenet": ("train", "val")}

# Per-channel statistics on the 0-1 scale.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# AlexNet PCA lighting on the 0-1 scale (= [55.46, 4.794, 1.148] / 255).
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


@dataclass
class AugSpec:
    """The paper's augmentation; fields that a dataset does not use are ignored by it."""

    # ImageNet train: shorter side ~ U{scale_min..scale_max}, random crop, flip, lighting.
    scale_min: int = 256
    scale_max: int = 480
    crop: int = 224
    flip_p: float = 0.5
    lighting_std: float = 0.1  # AlexNet alphastd; 0 disables PCA lighting
    eigval: tuple[float, ...] = IMAGENET_EIGVAL
    eigvec: tuple[tuple[float, ...], ...] = IMAGENET_EIGVEC
    # CIFAR train: zero-pad then random crop of the original size.
    pad: int = 4
    # Normalisation, 0-1 scale. None = the dataset's own statistics (see dataset_stats).
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    mean_image: str | None = None  # .npy HxWx3 float per-pixel mean (the paper's option)
    # ImageNet eval.
    eval_resize: int = 256
    eval_scales: tuple[int, ...] = (224, 256, 384, 480, 640)

    def __post_init__(self):
        for key in ("mean", "std", "eigval"):
            value = getattr(self, key)
            if value is not None and len(value) != 3:
                raise ValueError(f"data.aug.{key}={list(value)}: expected 3 values (R, G, B)")
        if len(self.eigvec) != 3 or any(len(row) != 3 for row in self.eigvec):
            raise ValueError(f"data.aug.eigvec: expected a 3x3 matrix, got {self.eigvec}")
        if not 0 < self.scale_min <= self.scale_max:
            raise ValueError(f"data.aug.scale_min={self.scale_min}, scale_max={self.scale_max}: "
                             "expected 0 < scale_min <= scale_max")
        if not 0.0 <= self.flip_p <= 1.0:
            raise ValueError(f"data.aug.flip_p={self.flip_p}: expected a probability in [0, 1]")


@dataclass
class DataConfig:
    dataset: str = "cifar10"
    root: str = "data/records/cifar10"  # a dataset folder written by tools/convert.py
    backend: str = "native"
    batch_size: int = 128
    eval_batch_size: int = 256
    num_workers: int = 2  # loader threads/processes per rank (CPU side)
    val_size: int = 5000  # CIFAR: images held out of the official train set as `val`
    split_seed: int = 0  # fixed seed of that hold-out
    dtype: str = "float32"  # float32 | bfloat16, of the images handed to the loop
    channels_last: bool = True
    # Records against their manifest when a loader is built (records/check.py): "cheap" (sizes,
    # sampled digests, headers, labels) or "full" (also every file's sha256).
    verify: str = "cheap"
    aug: AugSpec = field(default_factory=AugSpec)

    def __post_init__(self):
        for key, value, allowed in (
            ("data.dataset", self.dataset, DATASETS),
            ("data.backend", self.backend, BACKENDS),
            ("data.dtype", self.dtype, ("float32", "bfloat16")),
            ("data.verify", self.verify, VERIFY_MODES),
        ):
            if value not in allowed:
                raise ValueError(f"{key}={value!r}: expected one of {', '.join(allowed)}")
        for key in ("batch_size", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"data.{key}={getattr(self, key)}: must be >= 1")
        if self.num_workers < 0 or self.val_size < 0:
            raise ValueError(f"data.num_workers={self.num_workers}, data.val_size="
                             f"{self.val_size}: must be >= 0")


def dataset_stats(cfg: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on the 0-1 scale: the spec's own, else the dataset's."""
    default = {
        "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
        "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
        "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    }[cfg.dataset]
    return (cfg.aug.mean or default[0], cfg.aug.std or default[1])


def num_classes(dataset: str) -> int:
    return {"cifar10": 10, "cifar100": 100, "imagenet": 1000}[dataset]


def check_split(dataset: str, split: str) -> str:
    if split not in SPLITS[dataset]:
        extra = (" (ImageNet has no labelled test set: its reported numbers are val numbers)"
                 if dataset == "imagenet" and split == "test" else "")
        raise ValueError(f"split={split!r} for {dataset}: expected one of "
                         f"{', '.join(SPLITS[dataset])}{extra}")
    return split


def selection_split(cfg: DataConfig) -> str | None:
    """The split that picks the best model and drives the plateau rule (None: no hold-out)."""
    return "val" if cfg.dataset == "imagenet" or cfg.val_size > 0 else None


def report_split(cfg: DataConfig) -> str:
    """The split a finished run reports: CIFAR's test set; ImageNet's val (it has no other)."""
    return "val" if cfg.dataset == "imagenet" else "test"
