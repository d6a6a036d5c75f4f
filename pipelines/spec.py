"""One backend-neutral description of the data and its augmentation.

Every backend (native, ffcv, dali, torchvision baseline) reads these dataclasses, through its
LoaderRequest (pipelines/request.py), and the dataset's facts (records/datasets.py); its
augmentation family picks the recipe: "cifar" (pad, random crop, flip; eval as is) or
"imagenet" (shorter side ~ U{scale_min..scale_max}, random crop, flip, PCA lighting; eval center
crop, ten crops or multi-scale). train/config.py nests them: YAML keys are `data.*`, `data.aug.*`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.cache import check_mode as check_cache_mode
from records import datasets
from records import format as fmt
from records.check import VERIFY_MODES

DATASETS = tuple(datasets.DATASETS)  # every fact about each: records/datasets.py
BACKENDS = ("native", "ffcv", "dali", "torchvision", "synthetic")
EVAL_MODES = ("center", "tencrop", "multiscale")

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
    # JPEG records in memory or streamed (pipelines/cache.py): auto | ram | stream. auto: ram
    # when the split's records fit in half the available memory.
    cache: str = "auto"
    # JPEG share of each batch the GPU's decoder takes on CUDA (DALI's hw_decoder_load, with its
    # default); the rest is decoded on the CPU (native: by the loader threads; DALI: its hybrid
    # route). 1: all on the GPU decoder.
    hw_decoder_load: float = 0.65
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
        check_cache_mode(self.cache, self.dataset)
        for key in ("batch_size", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"data.{key}={getattr(self, key)}: must be >= 1")
        if not 0.0 <= self.hw_decoder_load <= 1.0:
            raise ValueError(f"data.hw_decoder_load={self.hw_decoder_load}: must be in [0, 1]")
        if self.num_workers < 0 or self.val_size < 0:
            raise ValueError(f"data.num_workers={self.num_workers}, data.val_size="
                             f"{self.val_size}: must be >= 0")


def dataset_stats(cfg: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on the 0-1 scale: the spec's own, else the dataset's (records/datasets.py;
    a folder dataset's were computed by its converter and are read from its manifest)."""
    if cfg.aug.mean and cfg.aug.std:
        return cfg.aug.mean, cfg.aug.std
    entry = datasets.get(cfg.dataset)
    mean, std = datasets.stats(entry, None if entry.mean else fmt.read_manifest(cfg.root,
                                                                               cfg.dataset))
    return (cfg.aug.mean or mean, cfg.aug.std or std)


def num_classes(data: DataConfig | str) -> int:
    """Classes a model of this data predicts: the dataset's count, or for a dataset whose classes
    come from its records (a folder dataset), the manifest's at data.root."""
    entry = datasets.get(data if isinstance(data, str) else data.dataset)
    if entry.classes is not None:
        return entry.classes
    if isinstance(data, str):
        raise ValueError(f"{entry.name}: its classes come from its records; pass the data "
                         "config (data.root)")
    return len(fmt.read_manifest(data.root, data.dataset)["classes"])


def class_names(cfg: DataConfig) -> list[str] | None:
    """The class names of the records at cfg.root (None: no records there)."""
    try:
        return datasets.class_names(fmt.read_manifest(cfg.root, cfg.dataset))
    except FileNotFoundError:
        return None


def selection_split(cfg: DataConfig) -> str | None:
    """The split that picks the best model and drives the plateau rule (None: no hold-out)."""
    return datasets.get(cfg.dataset).selection_split(cfg.val_size)


def report_split(cfg: DataConfig) -> str:
    """The split a finished run reports: CIFAR's test set; ImageNet's val (it has no other)."""
    return datasets.get(cfg.dataset).report
