"""One loader request: what a loader is asked for, built once from the config and checked once.

`pipelines.build_loader(...)` makes a `LoaderRequest` and hands it to the backend's
`build(request)`; a backend reads what it needs from it (and its dataset's facts from the
table in records/datasets.py) and derives nothing of its own: the batch (train or eval, and 1
for multi-scale), the stored split a split is drawn from, the dtype and layout of the images
handed to the loop, and the rank's share of every epoch (pipelines/plan.py) come from here.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from pipelines.cache import Cache, choose_cache
from pipelines.ops import DTYPES
from pipelines.spec import EVAL_MODES, AugSpec, DataConfig
from records import datasets


class LoaderError(ValueError):
    """A request the records cannot serve (e.g. a batch larger than the split): the config's
    fault, reported in one line."""


@dataclass(frozen=True)
class LoaderRequest:
    data: DataConfig  # backend, root, batch sizes, workers, dtype, layout, aug, ...
    split: str  # one the dataset serves (records/datasets.py)
    device: torch.device
    rank: int = 0
    world_size: int = 1
    seed: int = 0  # the run's seed: every epoch's order and draws are a function of it
    eval_mode: str = "center"  # eval splits: center | tencrop | multiscale
    scale: int | None = None  # multiscale: the shorter side of the whole image

    def __post_init__(self):
        object.__setattr__(self, "device", torch.device(self.device))
        self.dataset.check_split(self.split)
        mode, scale = self.eval_mode, self.scale
        if mode not in EVAL_MODES:
            raise ValueError(f"eval_mode={mode!r}: expected one of {', '.join(EVAL_MODES)}")
        if self.train and mode != "center":
            raise ValueError(f"eval_mode={mode!r} applies to eval splits, not to split='train'")
        if mode not in self.dataset.eval_modes:
            raise ValueError(f"eval_mode={mode!r} is for ImageNet-style datasets; "
                             f"{self.data.dataset} evaluates the image as it is "
                             "(eval_mode='center')")
        if mode == "multiscale":
            if not isinstance(scale, int) or isinstance(scale, bool) or scale <= 0:
                raise ValueError(f"eval_mode='multiscale' needs scale=<positive int shorter "
                                 f"side>, got scale={scale!r}")
        elif scale is not None:
            raise ValueError(f"scale={scale!r} is only used with eval_mode='multiscale'")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank={self.rank}, world_size={self.world_size}: need "
                             "0 <= rank < world_size")

    @property
    def dataset(self) -> datasets.Dataset:
        return datasets.get(self.data.dataset)

    @property
    def aug(self) -> AugSpec:
        return self.data.aug

    @property
    def train(self) -> bool:
        """Train: shuffled, augmented, full batches only. Eval: in order, every sample."""
        return self.split == "train"

    @property
    def stored_split(self) -> str:
        """The split of the records that this split is drawn from (CIFAR val: train)."""
        return self.dataset.stored_split(self.split)

    @property
    def imagenet_style(self) -> bool:
        """JPEGs of any size with ImageNet's augmentation (else CIFAR's: arrays of one size)."""
        return self.dataset.family == "imagenet"

    @property
    def batch_size(self) -> int:
        """data.batch_size for train, data.eval_batch_size for eval; multi-scale evaluates
        one whole image per batch (aspect ratios differ)."""
        if self.eval_mode == "multiscale":
            return 1
        return self.data.batch_size if self.train else self.data.eval_batch_size

    @cached_property
    def cache(self) -> Cache:
        """In memory or streamed (data.cache; "auto" looks at the records' size once)."""
        cfg = self.data
        return choose_cache(cfg.cache, cfg.root, cfg.dataset, cfg.backend, self.stored_split)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.data.dtype]

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.data.channels_last else torch.contiguous_format
