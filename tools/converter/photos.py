"""An ImageNet-format photo set for benchmarks, from nothing but scikit-image's bundled photos.

  python tools/converter/photos.py --out DIR [--train 3000] [--val 300] [--classes 100]
  python tools/converter/photos.py --export-sources DIR   # the photos, for --sources elsewhere

Each image is a random crop of one photo, flipped at random and resized to a size drawn from
ImageNet's distribution (longer side 500 px for most, 200-500 px for the rest; 4:3-ish aspect,
80% landscape; about 405x350 on average), saved as JPEG quality 90. The layout is the one
tools/convert.py imagenet reads: DIR/train/<wnid>/<wnid>_<i>.JPEG and
DIR/val/<wnid>/ILSVRC2012_val_<n>.JPEG. Deterministic for a given seed (image i depends on
(seed, split, i) only), written by a process pool.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

# scikit-image's colour photos (bundled with the package, no download)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
          "immunohistochemistry", "retina")
QUALITY = 90
IMAGE_EXTS = (".png", ".jpg", ".jpeg")


@cache
def sources(folder: str | None = None) -> list[Image.Image]:
    """The photos to crop from: every image in `folder`, else scikit-image's PHOTOS."""
    if folder is not None:
        paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not paths:
            raise FileNotFoundError(f"{folder}: no .png/.jpg photos to build the set from")
        return [Image.open(p).convert("RGB") for p in paths]
    try:
        import skimage.data
    except ImportError as error:
        raise ImportError("the photo set is cut from scikit-image's photos: install "
                          "scikit-image (make install) or pass --sources DIR") from error
    return [Image.fromarray(np.asarray(getattr(skimage.data, name)())[..., :3]).convert("RGB")
            for name in PHOTOS]


def export_sources(folder: Path) -> Path:
    """Save the source photos as PNGs (to build the set where scikit-image is missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in zip(PHOTOS, sources()):
        image.save(folder / f"{name}.png")
    return folder


def imagenet_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) drawn from an ImageNet-like distribution."""
    long = 500 if rng.random() < 0.5 else int(rng.integers(200, 501))
    short = max(100, round(long / rng.uniform(1.0, 1.6)))
    return (long, short) if rng.random() < 0.8 else (short, long)


def photo(rng: np.random.Generator, photos: list[Image.Image]) -> Image.Image:
    """A random crop of a random photo, maybe mirrored, at an ImageNet-like size."""
    src = photos[rng.integers(len(photos))]
    width, height = imagenet_size(rng)
    aspect, (sw, sh) = width / height, src.size
    cw = min(sw, sh * aspect) * np.sqrt(rng.uniform(0.3, 1.0))
    ch = cw / aspect
    left, top = rng.uniform(0, sw - cw), rng.uniform(0, sh - ch)
    view = src.resize((width, height), Image.Resampling.BILINEAR,
                      box=(left, top, left + cw, top + ch), reducing_gap=2.0)
    return view.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else view


def wnid(label: int) -> str:
    return f"n{label + 1:08d}"


def _write(job: tuple) -> int:
    path, seed, split_id, index, folder = job
    rng = np.random.default_rng([seed, split_id, index])
    buffer = io.BytesIO()
    photo(rng, sources(folder)).save(buffer, "JPEG", quality=QUALITY)
    Path(path).write_bytes(buffer.getvalue())
    return len(buffer.getvalue())


def write_photo_set(out, n_train: int = 3000, n_val: int = 300, classes: int = 100,
                    seed: int = 0, workers: int | None = None,
                    source_folder: str | None = None) -> Path:
    """Write the set under `out` (see the module doc); returns `out`. Existing files are kept."""
    out = Path(out)
    if min(n_train, classes) < 1 or n_val < 0 or n_train < classes:
        raise ValueError(f"n_train={n_train}, n_val={n_val}, classes={classes}: need "
                         "n_train >= classes >= 1 and n_val >= 0")
    jobs = []
    for split_id, (split, count) in enumerate((("train", n_train), ("val", n_val))):
        for i in range(count):
            label = i % classes
            folder = out / split / wnid(label)
            name = (f"{wnid(label)}_{i // classes}.JPEG" if split == "train"
                    else f"ILSVRC2012_val_{i + 1:08d}.JPEG")
            if not (folder / name).is_file():
                folder.mkdir(parents=True, exist_ok=True)
                jobs.append((str(folder / name), seed, split_id, i, source_folder))
    sources(source_folder)  # fail here, not in a worker, when there are none
    workers = workers or len(os.sched_getaffinity(0))
    if workers > 1 and len(jobs) > 50:
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(_write, jobs, chunksize=32):
                pass
    else:
        for job in jobs:
            _write(job)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the set here")
    parser.add_argument("--export-sources", type=Path, metavar="DIR",
                        help="only save the source photos as PNGs in DIR (for --sources on a "
                        "machine without scikit-image)")
    parser.add_argument("--train", type=int, default=3000, help="train images")
    parser.add_argument("--val", type=int, default=300, help="val images")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: cores)")
    parser.add_argument("--sources", help="folder of photos to crop from (default: "
                        "scikit-image's)")
    args = parser.parse_args(argv)
    if args.export_sources:
        print(f"{export_sources(args.export_sources)}: {len(PHOTOS)} source photos")
        return
    if args.out is None:
        parser.error("give --out DIR (or --export-sources DIR)")
    out = write_photo_set(args.out, args.train, args.val, args.classes, args.seed, args.workers,
                          args.sources)
    print(f"{out}: {args.train} train + {args.val} val JPEGs, {args.classes} classes")


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path[0] = str(Path(__file__).resolve().parents[2])
    main()
