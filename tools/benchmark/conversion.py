"""The ImageNet converter against what one process does with PIL: decode, resize, encode.

Goal: every format writes at >= 0.8 x reference x cores (the converter runs a process per core).
"""
from __future__ import annotations

import io
import shutil
import time
from pathlib import Path

from PIL import Image

from tools.converter.cli import default_workers
from tools.converter.datasets.imagenet import JPEG_QUALITY, TRAIN_MAX_SIDE, VAL_MAX_SIDE
from tools.converter.sources.images import fit_shorter

REFERENCE_SIDE = 256  # the reference resizes every image (shorter side), as a converter may


def reference_rate(src: Path, limit: int = 500) -> dict:
    """Images/s of one process doing PIL decode + resize + JPEG encode on the set's train
    images (up to `limit` of them)."""
    files = sorted(Path(src).glob("train/*/*.JPEG"))[:limit]
    if not files:
        raise FileNotFoundError(f"{src}/train/<wnid>/*.JPEG: no images")
    start = time.perf_counter()
    for path in files:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            small = rgb.resize(fit_shorter(rgb.size, REFERENCE_SIDE),
                               Image.Resampling.LANCZOS, reducing_gap=3.0)
            small.save(io.BytesIO(), "JPEG", quality=JPEG_QUALITY)
    seconds = time.perf_counter() - start
    return {"images": len(files), "seconds": seconds, "images_per_s": len(files) / seconds,
            "what": f"one process: PIL decode, resize (shorter side {REFERENCE_SIDE}, "
                    f"Lanczos), encode JPEG q{JPEG_QUALITY}"}


def converter_rates(src: Path, out: Path, formats: list[str], workers: int | None = None) -> dict:
    """Convert `src` afresh into `out` (replaced); images/s of each format's stage and of the
    whole job. Returns the records folder too."""
    from tools.converter.datasets.imagenet import convert_imagenet

    workers = workers or default_workers()
    root = Path(out) / "imagenet"
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    manifest, report = convert_imagenet(
        Path(src), root, formats=tuple(formats), workers=workers, strict=False,
        allow_subset=True, jpeg_quality=JPEG_QUALITY, train_max_side=TRAIN_MAX_SIDE,
        val_max_side=VAL_MAX_SIDE, shard_size=None)
    seconds = time.perf_counter() - start
    images = sum(split["count"] for split in manifest["splits"].values())
    stages = {name: {**r, "images_per_s": r["images"] / r["seconds"]}
              for name, r in report.items() if r["images"] and r["seconds"] > 0}
    return {"root": str(root), "workers": workers, "images": images, "seconds": seconds,
            "images_per_s": images / seconds, "stages": stages}


def compare(src: Path, out: Path, formats: list[str], workers: int | None = None,
            reference_limit: int = 500) -> dict:
    """Reference first, then the converter; ratio = stage rate / (reference x workers)."""
    reference = reference_rate(src, reference_limit)
    result = converter_rates(src, out, formats, workers)
    bound = reference["images_per_s"] * result["workers"]
    for stage in result["stages"].values():
        stage["of_reference_x_cores"] = stage["images_per_s"] / bound
    result["of_reference_x_cores"] = result["images_per_s"] / bound
    return {"reference": reference, **result}
