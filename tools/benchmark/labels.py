"""Reading every label of a webdataset split (the DALI loader's check at build) from a cold disk.

  .venv/bin/python tools/benchmark/labels.py [--samples 100000] [--work /tmp/respipe-labels]
      [--out bench/results]

Builds an ImageNet-format train split of --samples samples in webdataset shards of 1,000 (the
streaming benchmark's JPEGs of about 110 KB, so each .cls member lies in a page of its own, as in
ImageNet's shards), then times, each after the shards were evicted from the page cache
(posix_fadvise DONTNEED) and again warm: the shard indexes read into a SampleTable; the labels
read one pread at a time (what ShardReader.labels did before 2026-12-05); ShardReader.labels
(each shard's label pages asked for a shard ahead); a whole DALI train loader build.
Writes bench/results/<machine>-<date>-labels.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tools.benchmark.streaming import SHARD, evict, pool_jpegs  # noqa: E402


def make_split(folder: Path, n: int) -> Path:
    """folder/imagenet: n train and 1,000 val samples, webdataset only, label i % 1000."""
    from records import format as fmt
    from tools.converter.photos import wnid
    from tools.converter.writers.atomic import OutputDir
    from tools.converter.writers.webdataset import ShardWriter

    root = folder / "imagenet"
    if (root / "manifest.json").is_file():
        return root
    jpegs = pool_jpegs()
    out, files, info = OutputDir(root, fingerprint=f"labels benchmark {n}"), {}, {}
    try:
        for split, count in (("train", n), ("val", 1000)):
            for number, start in enumerate(range(0, count, SHARD)):
                shard = ShardWriter(out, fmt.shard_rel(split, number))
                for i in range(start, min(count, start + SHARD)):
                    shard.add(f"{split}_{i:08d}", jpegs[i % len(jpegs)], i % 1000)
                files.update(shard.commit())
            info[split] = {"count": count, "per_class": np.bincount(
                np.arange(count) % 1000, minlength=1000).tolist()}
        out.write_manifest(fmt.make_manifest(
            dataset="imagenet", formats=["webdataset"], source="labels benchmark", settings={},
            classes=[wnid(i) for i in range(1000)], splits=info, files=files, root=root))
    finally:
        out.close()
    return root


def timed(call) -> tuple[float, object]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def measure(root: Path) -> list[dict]:
    from pipelines import DataConfig, build_loader, readers

    cfg = DataConfig(dataset="imagenet", root=str(root), backend="dali", batch_size=256,
                     num_workers=2)
    expected = np.arange(len(readers.sample_table(cfg, "train"))) % 1000

    def table():
        readers._sample_table.cache_clear()
        return readers.sample_table(cfg, "train")

    def one_at_a_time():
        reader = readers.ShardReader(readers.sample_table(cfg, "train"))
        return np.asarray([reader.read_label(i) for i in range(len(reader))])

    def asked_ahead():
        return readers.ShardReader(readers.sample_table(cfg, "train")).labels()

    def dali_build():
        readers._sample_table.cache_clear()
        return len(build_loader(cfg, "train", "cpu", seed=0))

    rows = []
    for step, call in (("shard indexes -> SampleTable", table),
                       ("labels, one pread at a time (before)", one_at_a_time),
                       ("labels, ShardReader.labels (a shard ahead)", asked_ahead),
                       ("DALI train loader build (check included)", dali_build)):
        times = {}
        for cache in ("cold", "warm"):
            if cache == "cold":
                evict(root)
            times[cache], result = timed(call)
            if isinstance(result, np.ndarray) and not np.array_equal(result, expected):
                raise AssertionError(f"{step}: labels differ from the ones written")
        rows.append({"step": step, "cold_s": round(times["cold"], 2),
                     "warm_s": round(times["warm"], 2)})
    return rows


def report(rows: list[dict], n: int, command: str, load: tuple) -> str:
    lines = [f"# Reading a split's labels from a cold disk ({n:,} samples)", "",
             f"- command: `{command}`", f"- load average before: {list(load)}",
             "- cold: the shards evicted from the page cache first; warm: right after", "",
             "| step | cold (s) | warm (s) |", "|---|---:|---:|"]
    lines += [f"| {r['step']} | {r['cold_s']:.2f} | {r['warm_s']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    import os
    import socket
    from datetime import date

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/respipe-labels"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--name", default=f"cpu-{os.cpu_count()}c-{date.today()}-labels")
    args = parser.parse_args(argv)
    root = make_split(args.work / str(args.samples), args.samples)
    load = os.getloadavg()
    rows = measure(root)
    command = " ".join(["tools/benchmark/labels.py", *(argv or sys.argv[1:])])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(
        {"host": socket.gethostname(), "samples": args.samples, "load_before": load,
         "command": command, "rows": rows}, indent=1) + "\n")
    text = report(rows, args.samples, command, load)
    (args.out / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
