"""Records larger than memory: loader peak RSS and images/sec with data.cache=ram vs stream.

  .venv/bin/python tools/benchmark/streaming.py [--sizes 20000 50000] [--backends native ffcv]
      [--work /tmp/respipe-stream] [--batches N] [--out bench/results]

Builds an ImageNet-format record set of each size (webdataset shards of 1,000 and an FFCV
.beton, 400x350 JPEGs at quality 90 of about 110 KB, ImageNet's mean size: photo crops with
noise; sample i stores pool image i % 512, 1,000 classes). Then for each size, backend and mode
one process reads a train epoch (or --batches batches) at batch 256 on the CPU after the set's
files were evicted from the page cache (posix_fadvise DONTNEED, so reads come from the disk),
and reports its peak RSS (VmHWM: native, FFCV and DALI decode in threads of that process) and
images/sec. Stream mode should keep the peak RSS flat between sizes; ram mode maps (FFCV) or
expects the page cache to hold the records.
Writes bench/results/<machine>-<date>-streaming.{json,md}.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

POOL, QUALITY, NOISE, SIZE = 512, 90, 56, (400, 350)
SHARD = 1000


def pool_jpegs(count: int = POOL, seed: int = 0) -> list[bytes]:
    """Distinct 400x350 JPEGs of about 110 KB: crops of the bundled photos plus noise."""
    from PIL import Image

    from tools.converter.photos import sources

    rng, photos, out = np.random.default_rng(seed), sources(), []
    width, height = SIZE
    for _ in range(count):
        src = photos[rng.integers(len(photos))]
        sw, sh = src.size
        cw = min(sw, sh * width / height) * np.sqrt(rng.uniform(0.3, 1.0))
        ch = cw * height / width
        left, top = rng.uniform(0, sw - cw), rng.uniform(0, sh - ch)
        view = np.asarray(src.resize(SIZE, Image.Resampling.BILINEAR,
                                     box=(left, top, left + cw, top + ch)), dtype=np.float32)
        noisy = np.clip(view + rng.normal(0, NOISE, view.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, "JPEG", quality=QUALITY)
        out.append(buffer.getvalue())
    return out


class Encoded:
    """dataset[i] -> ((JPEG bytes, height, width), label) for the FFCV writer's encoded mode."""

    def __init__(self, jpegs: list[bytes], n: int):
        self.jpegs, self.n = jpegs, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return (self.jpegs[i % len(self.jpegs)], SIZE[1], SIZE[0]), i % 1000


def make_set(folder: Path, n: int, jpegs: list[bytes],
             formats: tuple[str, ...] = ("webdataset", "ffcv"),
             source: str = "streaming benchmark") -> Path:
    """folder/imagenet with n train and 1,000 val samples (label i % 1000) in `formats`."""
    from records import format as fmt
    from tools.converter.photos import wnid
    from tools.converter.writers.atomic import OutputDir
    from tools.converter.writers.webdataset import ShardWriter

    root = folder / "imagenet"
    if (root / "manifest.json").is_file():
        return root
    out, files, info = OutputDir(root, fingerprint=f"{source} {n}"), {}, {}
    try:
        for split, count in (("train", n), ("val", 1000)):
            for number, start in enumerate(range(0, count, SHARD)):
                shard = ShardWriter(out, fmt.shard_rel(split, number))
                for i in range(start, min(count, start + SHARD)):
                    shard.add(f"{split}_{i:08d}", jpegs[i % len(jpegs)], i % 1000)
                files.update(shard.commit())
            if "ffcv" in formats:
                from tools.converter.writers.ffcv import page_size_for, write_beton

                rel, page = fmt.beton_rel(split), page_size_for(max(map(len, jpegs)))
                files[rel] = write_beton(out, rel, Encoded(jpegs, count), workers=2,
                                         encoded=True, page_size=page)
            info[split] = {"count": count, "per_class": np.bincount(
                np.arange(count) % 1000, minlength=1000).tolist()}
        out.write_manifest(fmt.make_manifest(
            dataset="imagenet", formats=list(formats), source=source, settings={},
            classes=[wnid(i) for i in range(1000)], splits=info, files=files, root=root))
    finally:
        out.close()
    return root


def evict(root: Path) -> None:
    """Drop the set's pages from the page cache (no root needed), so reads hit the disk."""
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def measure(root: str, backend: str, mode: str, batches: int) -> dict:
    """One train pass in this process: images/sec after the first batch, peak RSS."""
    import torch

    from pipelines import DataConfig, build_loader
    from tools.benchmark.memory import peak_rss_mb

    torch.set_num_threads(2)
    cfg = DataConfig(dataset="imagenet", root=root, backend=backend, batch_size=256,
                     num_workers=2, cache=mode)
    loader = build_loader(cfg, "train", "cpu", seed=0)
    why = loader.request.cache.why
    loader.set_epoch(0)
    seen, start, total = 0, None, min(batches or len(loader), len(loader))
    for number, (images, _) in enumerate(loader):
        if number == 0:
            start = time.perf_counter()
        else:
            seen += len(images)
        if number + 1 >= total:
            break
    seconds = time.perf_counter() - start
    return {"backend": backend, "mode": mode, "cache": why,
            "batches": total, "images": seen, "img_per_s": round(seen / seconds, 1),
            "peak_rss_mb": peak_rss_mb(resource.RUSAGE_SELF)}


def run(args) -> list[dict]:
    rows, jpegs = [], None
    for n in args.sizes:
        folder = args.work / f"imagenet-{n}"
        if not (folder / "imagenet" / "manifest.json").is_file():
            jpegs = jpegs or pool_jpegs()
            started = time.perf_counter()
            make_set(folder, n, jpegs)
            print(f"{n}: records written in {time.perf_counter() - started:.0f} s", flush=True)
        root = folder / "imagenet"
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        for backend in args.backends:
            for mode in ("ram", "stream"):
                evict(root)
                command = [sys.executable, __file__, "--measure", str(root), backend, mode,
                           str(args.batches)]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"{backend} {mode} at {n}: failed:\n{done.stderr[-2000:]}")
                row = json.loads(done.stdout.strip().splitlines()[-1])
                row.update(samples=n, records_gb=round(size / 1e9, 2))
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def report(rows: list[dict], command: str) -> str:
    lines = ["# Records larger than memory: data.cache=ram vs stream", "",
             f"`{command}`, {time.strftime('%Y-%m-%d')}, page cache evicted before each pass, "
             "batch 256, 2 loader workers, CPU.", "",
             "| samples | records | backend | mode | batches | img/s | peak RSS MB |",
             "|---:|---:|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['samples']} | {r['records_gb']} GB | {r['backend']} | {r['mode']} | "
                     f"{r['batches']} | {r['img_per_s']} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--measure"]:
        root, backend, mode, batches = argv[1:5]
        print(json.dumps(measure(root, backend, mode, int(batches))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 50000])
    parser.add_argument("--backends", nargs="+", default=["native", "ffcv"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/respipe-stream"))
    parser.add_argument("--batches", type=int, default=0, help="per pass (0: a whole epoch)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--machine", default="cpu-2c")
    args = parser.parse_args(argv)
    rows = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{args.machine}-{time.strftime('%Y-%m-%d')}-streaming"
    command = "tools/benchmark/streaming.py " + " ".join(argv)
    stem.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    stem.with_suffix(".md").write_text(report(rows, command))
    print(f"wrote {stem}.md")


if __name__ == "__main__":
    main()
