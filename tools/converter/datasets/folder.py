"""The folder converter: any class-per-folder image set -> the records of ImageNet's formats
("webdataset" shards + "ffcv" .beton, writers/image_sets.py) in OUT/<--name>/.

  SRC/train/<class>/*.{jpg,jpeg,png,webp}    classes = the sorted folder names
  SRC/val/<class>/...                        optional; without it, --val-fraction of every
                                             class's train images is held out (seeded)

Every image is decoded, turned upright by its EXIF orientation, converted to RGB (CMYK,
greyscale, 16-bit, palette and transparent images included) and capped like ImageNet's. The
per-channel mean and std of the kept train images are computed on the way and stored in the
manifest ("stats"), with the class names; a loader normalizes with them.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from records import format as fmt
from records.datasets import Dataset

from ..sources.imagenet import Lister, make_items
from ..writers.atomic import OutputDir, fingerprint
from ..writers.image_sets import ImageSettings, write_image_splits
from . import imagenet

NEEDS_SRC = True
EXTS = (".jpg", ".jpeg", ".png", ".webp")
VAL_FRACTION = 0.1

HELP = f"""\
folder: --src DIR holds train/<class>/*.{{jpg,jpeg,png,webp}} and, optionally, val/<class>/
(a class in val/ must be in train/). Without val/, --val-fraction (default {VAL_FRACTION}) of
each class's train images, at least one of a class with two or more, is held out as val,
chosen by --val-seed. Classes are the sorted folder names. Images are turned upright (EXIF),
converted to RGB and stored like ImageNet's (shorter side capped at --train-max-side /
--val-max-side, JPEG --jpeg-quality when re-encoded); the per-channel mean and std of the train
images go to the manifest. Other files, undecodable images and broken or looping symbolic links
are listed in the manifest's "skipped" with a warning (--strict: an error); an empty class
folder, a class only in val/ or a class folder that loops is an error, before anything is
written.
"""


def add_arguments(parser: argparse.ArgumentParser, dataset: Dataset) -> None:
    parser.add_argument("--name", default=os.environ.get("NAME") or None,
                        help="the records' folder: OUT/NAME (default: $NAME)")
    parser.add_argument("--val-fraction", type=float, default=VAL_FRACTION,
                        help="share of each class held out as val when SRC has no val/")
    parser.add_argument("--val-seed", type=int, default=0, help="seed of that hold-out")
    imagenet.add_arguments(parser, dataset)


def held_out(count: int, fraction: float) -> int:
    """Images of a class of `count` held out as val: its share, rounded, at least one when it
    has two or more, and never all of them."""
    if count < 2:
        return 0
    return min(count - 1, max(1, round(count * fraction)))


def list_splits(src: Path, val_fraction: float, val_seed: int):
    """(lister, classes, {split: [(class, entry)]}, how val was made)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"--val-fraction={val_fraction}: expected a fraction in (0, 1)")
    train_root, val_root = src / "train", src / "val"
    if not train_root.is_dir():
        raise ValueError(f"{train_root}: not found; a folder dataset is SRC/train/<class>/"
                         "<images> (and optionally SRC/val/<class>/<images>)")
    lister = Lister(src, EXTS)
    train = lister.class_folders(train_root)
    if not train:
        raise ValueError(f"{train_root}: no class folders")
    classes = sorted(train)
    if val_root.is_dir():
        val = lister.class_folders(val_root)
        strangers = sorted(set(val) - set(train))
        if strangers:
            raise ValueError(f"{val_root / strangers[0]}: class {strangers[0]!r} is in val/ but "
                             f"not in train/ ({len(strangers)} such classes); a model cannot "
                             f"learn it: add {train_root / strangers[0]}/ or remove the val folder")
        how = {"val": "folder"}
    else:
        rng, val = np.random.default_rng(val_seed), {}
        for name in classes:
            entries = train[name]
            chosen = set(rng.permutation(len(entries))[:held_out(len(entries), val_fraction)])
            val[name] = [e for i, e in enumerate(entries) if i in chosen]
            train[name] = [e for i, e in enumerate(entries) if i not in chosen]
        how = {"val": "held out of train", "val_fraction": val_fraction, "val_seed": val_seed}
    splits = {split: [(name, entry) for name in classes for entry in folders.get(name, ())]
              for split, folders in (("train", train), ("val", val))}
    return lister, classes, splits, how


def convert(dataset: Dataset, src: Path, root: Path, *, formats, workers, strict, allow_subset,
            name, val_fraction=VAL_FRACTION, val_seed=0, jpeg_quality=imagenet.JPEG_QUALITY,
            train_max_side=None, val_max_side=None, shard_size=None, shuffle_seed=0):
    del allow_subset  # a folder has no official size to fall short of
    lister, classes, entries, how = list_splits(Path(src), val_fraction, val_seed)
    imagenet.warn_skipped(lister.skipped, strict)
    max_side = {"train": train_max_side or dataset.max_side["train"],
                "val": val_max_side or dataset.max_side["val"]}
    image = ImageSettings(jpeg_quality, max_side, shard_size, upright=True, stats=True)
    settings = {**image.manifest(), **how, "shuffle_seed": shuffle_seed}
    identity = {"layout": "folders", "listing_sha256": lister.digest()}
    out = OutputDir(root, fingerprint(dataset=dataset.name, name=name, source=identity,
                                      settings=settings))
    try:
        index = {label: i for i, label in enumerate(classes)}
        train = make_items(entries["train"], index)
        order = np.random.default_rng(shuffle_seed).permutation(len(train))
        splits = {"train": [train[i] for i in order], "val": make_items(entries["val"], index)}
        written = write_image_splits(out, splits, classes, formats=formats, workers=workers,
                                     strict=strict, settings=image, src=src)
        manifest = fmt.make_manifest(
            dataset=dataset.name, formats=formats, source={"path": str(src), **identity},
            settings=settings, classes=classes, splits=written.splits, files=written.files,
            root=root, skipped=lister.skipped + written.skipped, fingerprint=out.fingerprint,
            name=name, stats=written.stats)
        out.write_manifest(manifest)
        return manifest, written.report
    finally:
        out.close()
