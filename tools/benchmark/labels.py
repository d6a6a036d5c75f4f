"""Reading every label of a webdataset split (the DALI loader's check at build) from a cold disk.

  .venv/bin/python tools/benchmark/labels.py [--samples 100000] [--work /tmp/respipe-labels]
      [--out bench/results]

Builds an ImageNet-format train split of --samples samples in webdataset shards of 1,000 (the
streaming benchmark's JPEGs of about 110 KB, so each .cls member lies in a page of its own, as in
ImageNet's shards), then times, each after the shards were evicted from the page cache
(posix_fadvise DONTNEED) and again warm: the shard indexes read into a SampleTable; the labels
read one pread at a time (what ShardReader.labels did before 2026-12-05); ShardReader.labels
(each shard's label pages asked for a shard ahead); a whole DALI train loader build. Then, at
full ImageNet's size (--index-samples, 1,281,167 in shards of 1,000: the indexes alone, 130 MB),
the shard indexes parsed line by line (records.format.read_shard_index, every index's parser
before 2026-12-05) and column by column (readers._index_columns), cold and warm.
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

from tools.benchmark.streaming import SHARD, evict, make_set, pool_jpegs  # noqa: E402


def make_split(folder: Path, n: int) -> Path:
    """folder/imagenet: n train and 1,000 val samples, webdataset only, label i % 1000 (made
    once: make_set returns a set that is already there)."""
    return make_set(folder, n, pool_jpegs(), formats=("webdataset",), source="labels benchmark")


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
    for step, call in (("shard indexes -> SampleTable (column by column)", table),
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


def make_indexes(folder: Path, n: int) -> list[Path]:
    """Shard indexes of n samples in shards of 1,000, in the converter's layout (JPEGs of 100 to
    160 KB), without their tars: parsing an index reads only the index."""
    from records import format as fmt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard, start in enumerate(range(0, n, SHARD)):
        path = folder / f"shard-{shard:06d}.idx"
        if not path.is_file():
            lines, position = [], 0
            for i in range(start, min(n, start + SHARD)):
                size = 100_000 + (i * 7919) % 60_000
                padded = -(-size // 512) * 512
                lines.append(fmt.shard_index_line(f"n{i % 1000:08d}_{i:08d}", [
                    ("jpg", position + 512, size), ("cls", position + 1536 + padded, 3)]))
                position += 2048 + padded
            path.write_text(fmt.shard_index_text(lines))
        paths.append(path)
    return paths


def measure_indexes(paths: list[Path]) -> list[dict]:
    from pipelines import readers

    def line_by_line():
        return sum(len(readers._index_rows(str(p), p)[0]) for p in paths)

    def column_by_column():
        return sum(len(readers._index_columns(p)[0]) for p in paths)

    rows, counts = [], set()
    for step, call in (("indexes line by line (before)", line_by_line),
                       ("indexes column by column", column_by_column)):
        times = {}
        for cache in ("cold", "warm"):
            if cache == "cold":
                evict(paths[0].parent)
            times[cache], count = timed(call)
            counts.add(count)
        rows.append({"step": step, "cold_s": round(times["cold"], 2),
                     "warm_s": round(times["warm"], 2)})
    if len(counts) != 1:
        raise AssertionError(f"the parsers read different sample counts: {counts}")
    return rows


def table_lines(rows: list[dict]) -> list[str]:
    return (["| step | cold (s) | warm (s) |", "|---|---:|---:|"]
            + [f"| {r['step']} | {r['cold_s']:.2f} | {r['warm_s']:.2f} |" for r in rows])


def report(rows: list[dict], n: int, command: str, load: tuple,
           index_rows: list[dict], index_n: int) -> str:
    lines = [f"# Reading a split's labels from a cold disk ({n:,} samples)", "",
             f"- command: `{command}`", f"- load average before: {list(load)}",
             "- cold: the shards evicted from the page cache first; warm: right after", "",
             *table_lines(rows)]
    if index_rows:
        lines += ["", f"## The shard indexes alone at {index_n:,} samples "
                  f"({-(-index_n // SHARD):,} indexes)", "", *table_lines(index_rows)]
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
    parser.add_argument("--index-samples", type=int, default=1_281_167,
                        help="samples of the index-only set (0: skip it)")
    args = parser.parse_args(argv)
    root = make_split(args.work / str(args.samples), args.samples)
    indexes = (make_indexes(args.work / f"indexes-{args.index_samples}", args.index_samples)
               if args.index_samples else [])
    load = os.getloadavg()
    rows = measure(root)
    index_rows = measure_indexes(indexes) if indexes else []
    command = " ".join(["tools/benchmark/labels.py", *(argv or sys.argv[1:])])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(
        {"host": socket.gethostname(), "samples": args.samples, "load_before": load,
         "command": command, "rows": rows, "index_samples": args.index_samples,
         "index_rows": index_rows}, indent=1) + "\n")
    text = report(rows, args.samples, command, load, index_rows, args.index_samples)
    (args.out / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
