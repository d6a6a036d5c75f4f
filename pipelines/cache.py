"""data.cache: whether a loader reads its records as if they stay in memory or streams them.

- "ram": the page cache is assumed to hold the records after the first epoch: a global shuffle
  with random reads (native, torchvision), FFCV's memory map (os_cache=True), DALI's mmap.
- "stream": the records may be larger than memory: the plan visits storage blocks (shards,
  FFCV pages) in a random order and shuffles within a bounded window (plan.windowed_order);
  native and torchvision announce each shard to the kernel to read it ahead sequentially,
  FFCV reads pages into its own bounded buffers (os_cache=False), DALI reads without mmap with
  its reader's shuffle buffer. What a rank holds no longer grows with the records' size.
- "auto": "ram" when the split's records fit in half the memory available now, else "stream";
  the run header says which, and why.

CIFAR-style datasets are loaded into memory as arrays (about 150 MB): always "ram".
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from records import datasets
from records import format as fmt
from records.check import Checker

MODES = ("auto", "ram", "stream")


def check_mode(mode: str, dataset: str) -> None:
    """data.cache's value, for this dataset (CIFAR-style arrays are not streamed)."""
    if mode not in MODES:
        raise ValueError(f"data.cache={mode!r}: expected one of {', '.join(MODES)}")
    if mode == "stream" and datasets.get(dataset).family != "imagenet":
        raise ValueError(f"data.cache=stream: {dataset} is loaded into memory as arrays, "
                         "not streamed; use data.cache=auto or ram")


@dataclass(frozen=True)
class Cache:
    mode: str  # ram | stream
    why: str  # for the run header

    @property
    def stream(self) -> bool:
        return self.mode == "stream"


def available_memory() -> int:
    """Bytes of memory available to new work now (MemAvailable: free + reclaimable cache)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def records_size(root: str, dataset: str, format_name: str, split: str) -> int:
    """Bytes of the `format_name` files that hold the stored `split` (those present)."""
    manifest = fmt.read_manifest(root, dataset)
    paths = (Path(root) / rel for rel in Checker(root, manifest, "cheap").rels(format_name, split))
    return sum(path.stat().st_size for path in paths if path.is_file())


def gib(size: int) -> str:
    return f"{size / 2 ** 30:.1f} GiB"


def choose_cache(mode: str, root: str, dataset: str, backend: str, split: str,
                 memory: int | None = None) -> Cache:
    """The cache mode a loader of `split` uses (mode: data.cache)."""
    check_mode(mode, dataset)
    entry = datasets.get(dataset)
    format_name = entry.reads(backend)
    if format_name is None:
        return Cache("ram", f"data.backend={backend} reads no records")
    if entry.family != "imagenet":
        return Cache("ram", f"{dataset} is loaded into memory as arrays")
    if mode != "auto":
        return Cache(mode, f"data.cache={mode}")
    size, memory = records_size(root, dataset, format_name, split), memory or available_memory()
    fits = size <= memory // 2
    return Cache("ram" if fits else "stream",
                 f"data.cache=auto: {split} records {gib(size)} "
                 f"{'fit in' if fits else 'exceed'} half of {gib(memory)} available")
