"""Every fact about a dataset, in one table: `DATASETS[name]` is a `Dataset`.

The converter (tools/converter/), the record checks (records/), the pipelines and their synthetic
backend (pipelines/), the config checks and the trainer (train/) read a dataset's name, splits,
classes, statistics, record formats and augmentation family here, and nowhere else.

Adding a dataset takes two things:
1. its entry in DATASETS below;
2. its converter, tools/converter/datasets/<entry.converter>.py, which reads the source and
   writes the entry's record formats and the manifest (records/format.py) with the shared
   writers (tools/converter/writers/).
Nothing else: `tools/convert.py <name>`, `make dataset-<name>`, the loaders of every backend
(picked by the augmentation family), the synthetic backend, the checks and the reports all come
from the entry. The `folder` dataset (any class-per-folder image set) was added this way.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FAMILIES = ("cifar", "imagenet")  # augmentation family: pipelines/spec.py describes each


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str  # for messages
    # "cifar": stored as uint8 arrays of one size; pad + random crop + flip; eval as is.
    # "imagenet": stored as JPEGs of any size; scale augmentation, random crop, flip, lighting;
    # eval center crop, ten crops or multi-scale.
    family: str
    stored: tuple[str, ...]  # the splits the records hold
    served: tuple[str, ...]  # the splits the loaders serve
    report: str  # the split a finished run reports
    # True: the served "val" is a fixed random hold-out of data.val_size stored train images
    # (data.split_seed) and "train" the rest. False: val is stored (made by the converter).
    val_held_out: bool
    formats: tuple[str, ...]  # record formats; formats[0] is what native, dali, torchvision read
    classes: int | None  # None: as many as the manifest lists (the source's folders)
    mean: tuple[float, ...] | None  # per channel, 0-1 scale; None: the manifest's "stats"
    std: tuple[float, ...] | None
    image_size: tuple[int, int] | None  # (H, W) of every stored image; None: any size
    max_side: dict[str, int] | None  # converter's cap on the shorter side, per stored split
    counts: dict[str, int] | None  # images per stored split of the full set (synthetic, no records)
    source: str  # what --src takes, for help and messages
    src_var: str  # make variable (and environment default) of --src
    converter: str  # tools/converter/datasets/<converter>.py
    named: bool = False  # records go to DIR/<--name> (several sets of this kind), not DIR/<name>

    @property
    def eval_modes(self) -> tuple[str, ...]:
        return ("center", "tencrop", "multiscale") if self.family == "imagenet" else ("center",)

    def check_split(self, split: str) -> str:
        if split not in self.served:
            extra = (f" ({self.title} has no labelled test set: its reported numbers are val "
                     "numbers)" if split == "test" and self.report == "val" else "")
            raise ValueError(f"split={split!r} for {self.name}: expected one of "
                             f"{', '.join(self.served)}{extra}")
        return split

    def stored_split(self, split: str) -> str:
        """The stored split that a served split is drawn from."""
        self.check_split(split)
        return "train" if self.val_held_out and split == "val" else split

    def positions(self, split: str, stored_count: int, val_size: int,
                  split_seed: int) -> np.ndarray:
        """Sorted positions in `stored_split(split)` of the served split's samples: the
        val_held_out rule (a fixed random hold-out of val_size train images) written once."""
        source = self.stored_split(split)
        if not self.val_held_out or source != "train":
            return np.arange(stored_count, dtype=np.int64)
        if not 0 <= val_size < stored_count:
            raise ValueError(f"data.val_size={val_size}: must be in [0, {stored_count})")
        order = np.random.default_rng(split_seed).permutation(stored_count)
        return np.sort(order[:val_size] if split == "val" else order[val_size:])

    def split_count(self, split: str, stored_count: int, val_size: int) -> int:
        """len(positions(...)) without drawing them."""
        if not self.val_held_out or self.stored_split(split) != "train":
            return stored_count
        return val_size if split == "val" else stored_count - val_size

    def selection_split(self, val_size: int) -> str | None:
        """The split that picks the best model and drives the plateau rule (None: none)."""
        return "val" if not self.val_held_out or val_size > 0 else None

    def reads(self, backend: str) -> str | None:
        """The record format a backend reads (None: synthetic reads none)."""
        if backend == "synthetic":
            return None
        return "ffcv" if backend == "ffcv" else self.formats[0]

    def make_target(self, name: str | None = None, src: str | None = None) -> str:
        """The command that (re)writes this dataset's records."""
        command = f"make dataset-{self.name} {self.src_var}={src or '...'}"
        return command + (f" NAME={name or '...'}" if self.named else "")


def _cifar(name: str, title: str, classes: int, mean, std) -> Dataset:
    """CIFAR-10 and CIFAR-100 differ in these only."""
    tarball = f"cifar-{name.removeprefix('cifar')}-python.tar.gz"
    return Dataset(name, title, "cifar", stored=("train", "test"),
                   served=("train", "val", "test"), report="test", val_held_out=True,
                   formats=("arrays", "ffcv"), classes=classes, mean=mean, std=std,
                   image_size=(32, 32), max_side=None, counts={"train": 50000, "test": 10000},
                   source=f"the official python tarball, {tarball}",
                   src_var=f"{name.upper()}_SRC", converter="cifar")


# ImageNet: shorter side capped at the largest train scale (480) and the largest multi-scale test
# side (640). Most ImageNet photos (~500x375) are below both caps and keep their original JPEG.
PHOTO_MAX_SIDE = {"train": 480, "val": 640}

DATASETS: dict[str, Dataset] = {d.name: d for d in (
    _cifar("cifar10", "CIFAR-10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    _cifar("cifar100", "CIFAR-100", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    Dataset("imagenet", "ImageNet", "imagenet", stored=("train", "val"), served=("train", "val"),
            report="val", val_held_out=False, formats=("webdataset", "ffcv"), classes=1000,
            mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), image_size=None,
            max_side=PHOTO_MAX_SIDE, counts={"train": 1281167, "val": 50000},
            source="a folder with the official ILSVRC2012 archives, or with train/<wnid>/ and "
                   "val/", src_var="IMAGENET_SRC", converter="imagenet"),
    Dataset("folder", "Your image folder", "imagenet", stored=("train", "val"),
            served=("train", "val"), report="val", val_held_out=False,
            formats=("webdataset", "ffcv"), classes=None, mean=None, std=None, image_size=None,
            max_side=PHOTO_MAX_SIDE, counts=None,
            source="a folder with train/<class>/*.{jpg,jpeg,png,webp} (and val/<class>/, else "
                   "val is held out of train)", src_var="SRC", converter="folder", named=True),
)}


def get(name: str) -> Dataset:
    """The table entry of `name`; a ValueError listing the known ones otherwise."""
    if name not in DATASETS:
        raise ValueError(f"dataset {name!r}: expected one of {', '.join(DATASETS)}")
    return DATASETS[name]


def class_names(manifest: dict) -> list[str]:
    """Readable class names of converted records: the manifest's "class_names" (ImageNet: from
    the devkit), else its "classes" (CIFAR's names, WNIDs, folder names)."""
    return list(manifest.get("class_names") or manifest["classes"])


def stats(dataset: Dataset, manifest: dict | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel on the 0-1 scale: the table's, else the manifest's "stats"."""
    if dataset.mean is not None:
        return dataset.mean, dataset.std
    if manifest is None or "stats" not in manifest:
        raise ValueError(f"{dataset.name}: its mean/std come from the records' manifest "
                         f"(computed by the converter); convert it with {dataset.make_target()}")
    return tuple(manifest["stats"]["mean"]), tuple(manifest["stats"]["std"])
