"""The imagenet converter: ImageNet-2012 (official archives or extracted folders) ->
"webdataset" shards + "ffcv" .beton (writers/image_sets.py), with the devkit's class names.

Class index = position in the sorted WNIDs (torchvision's convention); without --allow-subset
there must be all 1000 classes (sources/imagenet.py). Train is shuffled once (seed 0) before
sharding, since DALI's webdataset reader only shuffles within a buffer; val keeps name order.
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

from records import datasets
from records import format as fmt
from records.datasets import Dataset

from ..sources.imagenet import load_source
from ..writers.atomic import OutputDir, fingerprint
from ..writers.image_sets import ImageSettings, SkippedImageWarning, write_image_splits

NEEDS_SRC = True
JPEG_QUALITY = 90  # FFCV re-encodes every image at this quality; so do the shards when resized
# The benchmark's defaults (tools/benchmark/conversion.py): the table's caps for ImageNet.
TRAIN_MAX_SIDE, VAL_MAX_SIDE = (datasets.DATASETS["imagenet"].max_side[split]
                                for split in ("train", "val"))

HELP = f"""\
ImageNet: --src is a folder holding either train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (val/ may
be flat ILSVRC2012_val_*.JPEG with the devkit), or the official ILSVRC2012_img_train.tar,
ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz (read in place, never unpacked).
Images are decoded, converted to RGB (CMYK, grayscale, PNG-named-.JPEG all handled), their
shorter side capped at {TRAIN_MAX_SIDE} (train) / {VAL_MAX_SIDE} (val) px (--train-max-side,
--val-max-side), then
  ffcv: RGBImageField(write_mode="jpg", jpeg_quality={JPEG_QUALITY}) (--jpeg-quality),
        max_resolution unset (it would cap the LONGER side; images are pre-resized instead).
        Disk: about the size of the source JPEGs, ImageNet's average being ~110 KB, so
        ~100-140 GB for train and ~5 GB for val (52 KB/image measured on 500 px photos);
  webdataset: shards webdataset/<split>/shard-NNNNNN.tar (+ .idx for fn.readers.webdataset)
        of <key>.jpg + <key>.cls, --shard-size images each (default: min(1000, N/8), ~110 MB);
        an RGB JPEG that needs no resize is stored byte for byte, others are re-encoded
        at --jpeg-quality. Train is shuffled once (seed 0) before sharding; val keeps name order.
Undecodable or truncated images are listed in manifest "skipped" with a warning (--strict:
error). Class index = position in sorted WNIDs; without --allow-subset there must be 1000.
"""


def add_arguments(parser: argparse.ArgumentParser, dataset: Dataset) -> None:
    """The options of every image set (imagenet, folder)."""
    parser.add_argument("--jpeg-quality", type=int, default=JPEG_QUALITY)
    parser.add_argument("--train-max-side", type=int, default=dataset.max_side["train"],
                        help="cap on the shorter side of train images (px)")
    parser.add_argument("--val-max-side", type=int, default=dataset.max_side["val"],
                        help="cap on the shorter side of val images (px)")
    parser.add_argument("--shard-size", type=int, default=None,
                        help="images per webdataset shard (default min(1000, N/8))")


def convert(dataset: Dataset, src: Path, root: Path, *, formats, workers, strict, allow_subset,
            jpeg_quality=JPEG_QUALITY, train_max_side=None, val_max_side=None, shard_size=None):
    return convert_imagenet(src, root, formats=formats, workers=workers, strict=strict,
                            allow_subset=allow_subset, jpeg_quality=jpeg_quality,
                            train_max_side=train_max_side or dataset.max_side["train"],
                            val_max_side=val_max_side or dataset.max_side["val"],
                            shard_size=shard_size)


def warn_skipped(skipped: list[dict], strict: bool) -> None:
    """Listed skips: a warning each, or with --strict the first one an error."""
    if strict and skipped:
        raise ValueError(f"{skipped[0]['file']}: {skipped[0]['reason']} (--strict)")
    for entry in skipped:
        warnings.warn(f"skipped {entry['file']}: {entry['reason']}", SkippedImageWarning,
                      stacklevel=3)


def convert_imagenet(src, root, *, formats, workers, strict, allow_subset, jpeg_quality,
                     train_max_side, val_max_side, shard_size, shuffle_seed=0):
    source = load_source(src, allow_subset)
    warn_skipped(source.skipped, strict)
    image = ImageSettings(jpeg_quality, {"train": train_max_side, "val": val_max_side},
                          shard_size)
    settings = {**image.manifest(), "shuffle_seed": shuffle_seed, "allow_subset": allow_subset}
    out = OutputDir(Path(root), fingerprint(dataset="imagenet", source=source.identity,
                                            settings=settings))
    try:
        order = np.random.default_rng(shuffle_seed).permutation(len(source.splits["train"]))
        splits = {"train": [source.splits["train"][i] for i in order],
                  "val": source.splits["val"]}
        written = write_image_splits(out, splits, source.classes, formats=formats,
                                     workers=workers, strict=strict, settings=image, src=src)
        extra = {"class_names": source.class_names} if source.class_names else {}
        manifest = fmt.make_manifest(
            dataset="imagenet", formats=formats, source={"path": str(src), **source.identity},
            settings=settings, classes=source.classes, splits=written.splits,
            files=written.files, root=root, skipped=source.skipped + written.skipped,
            fingerprint=out.fingerprint, **extra)
        out.write_manifest(manifest)
        return manifest, written.report
    finally:
        out.close()
