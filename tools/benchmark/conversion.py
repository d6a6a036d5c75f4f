"""The ImageNet converter against what one process does with PIL: decode, resize, encode.

Goal: the whole job (scan + every format) at >= 0.8 x reference x processes (the converter runs
a process per core), at every size; and its peak memory flat as the set grows. Each conversion
runs in a fresh process (`python -m tools.benchmark.conversion SRC OUT FORMATS WORKERS`), as
tools/convert.py would, so its timing includes importing FFCV and its peak RSS is its own.
"""
from __future__ import annotations

import io
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from tools.benchmark.memory import peak_rss_mb
from tools.converter.cli import default_workers
from tools.converter.datasets.imagenet import JPEG_QUALITY, TRAIN_MAX_SIDE, VAL_MAX_SIDE
from tools.converter.sources.images import fit_shorter

ROOT = Path(__file__).resolve().parents[2]
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


def convert_here(src: Path, out: Path, formats: list[str], workers: int) -> dict:
    """Convert `src` afresh into `out`/imagenet in this process: seconds of the whole job (FFCV's
    import included, timed apart too), of each format's stage, and the peak RSS of this process
    and of its largest worker (decode pool, FFCV writers: forks of this process)."""
    import multiprocessing

    from tools.converter.datasets.imagenet import convert_imagenet
    from tools.converter.writers.ffcv import import_ffcv

    root = Path(out) / "imagenet"
    shutil.rmtree(root, ignore_errors=True)
    before = peak_rss_mb(resource.RUSAGE_SELF)
    start = time.perf_counter()
    if "ffcv" in formats:
        import_ffcv()
    imported, after_import = time.perf_counter() - start, peak_rss_mb(resource.RUSAGE_SELF)
    manifest, report = convert_imagenet(
        Path(src), root, formats=tuple(formats), workers=workers, strict=False,
        allow_subset=True, jpeg_quality=JPEG_QUALITY, train_max_side=TRAIN_MAX_SIDE,
        val_max_side=VAL_MAX_SIDE, shard_size=None)
    seconds = time.perf_counter() - start
    multiprocessing.active_children()  # reap FFCV's writers, so RUSAGE_CHILDREN counts them
    images = sum(split["count"] for split in manifest["splits"].values())
    stages = {name: {**r, "images_per_s": r["images"] / r["seconds"]}
              for name, r in report.items() if r["images"] and r["seconds"] > 0}
    return {"root": str(root), "workers": workers, "images": images, "seconds": seconds,
            "import_seconds": imported, "images_per_s": images / seconds, "stages": stages,
            "peak_rss_mb": {"before_import": before, "after_import": after_import,
                            "main": peak_rss_mb(resource.RUSAGE_SELF),
                            "largest_worker": peak_rss_mb(resource.RUSAGE_CHILDREN)}}


def converter_rates(src: Path, out: Path, formats: list[str], workers: int | None = None) -> dict:
    """convert_here in a fresh Python process (what tools/convert.py costs, on its own)."""
    command = [sys.executable, "-m", "tools.benchmark.conversion", str(src), str(out),
               ",".join(formats), str(workers or default_workers())]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"converting {src} failed (exit {done.returncode}):\n"
                           f"{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(src: Path, out: Path, formats: list[str], workers: int | None = None,
            reference_limit: int = 500, more: tuple[tuple[Path, Path], ...] = ()) -> dict:
    """Reference first (on `src`), then the converter on `src` and on each (src, out) of `more`
    (larger sets of the same photos; their records are deleted once measured);
    ratio = rate / (reference x workers)."""
    reference = reference_rate(src, reference_limit)
    runs = [converter_rates(src, out, formats, workers)]
    for extra_src, extra_out in more:
        runs.append(converter_rates(extra_src, extra_out, formats, workers))
        shutil.rmtree(extra_out, ignore_errors=True)
    for run in runs:
        bound = reference["images_per_s"] * run["workers"]
        for stage in run["stages"].values():
            stage["of_reference_x_cores"] = stage["images_per_s"] / bound
        run["of_reference_x_cores"] = run["images_per_s"] / bound
    return {"reference": reference, "workers": runs[0]["workers"], "root": runs[0]["root"],
            "runs": runs}


if __name__ == "__main__":
    src_arg, out_arg, formats_arg, workers_arg = sys.argv[1:5]
    print(json.dumps(convert_here(Path(src_arg), Path(out_arg), formats_arg.split(","),
                                  int(workers_arg))))
