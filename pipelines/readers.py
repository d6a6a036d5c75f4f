"""Reading the records tools/convert.py writes (their layout is records/format.py's).

Shared by every backend: the manifest checked for the backend's format, the CIFAR arrays and the
fixed train/val hold-out, and a split's SampleTable (where each sample's JPEG and label lie, from
the shard indexes) with a thread-safe random-access reader.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipelines.spec import DataConfig
from records import datasets
from records import format as fmt
from records.check import Checker


# ----------------------------------------------------------------------------- manifest
def open_records(cfg: DataConfig, needed: str | None = None, split: str | None = None) -> dict:
    """The manifest of cfg.root, checked to hold cfg.dataset in the format cfg.backend reads
    (or `needed`); with a stored `split`, that split's files are checked against the manifest
    (records/check.py, cfg.verify)."""
    manifest = fmt.read_manifest(cfg.root, cfg.dataset)
    needed = fmt.require_format(cfg.root, manifest, cfg.backend, needed)
    if split is not None and needed is not None:
        check = checker(cfg, manifest)
        rels = check.rels(needed, split)
        if not rels:
            raise missing(Path(cfg.root) / fmt.shard_folder_rel(split) / "shard-*.tar", cfg)
        for rel in rels:
            if not (Path(cfg.root) / rel).is_file():
                raise missing(Path(cfg.root) / rel, cfg)
        check.split(needed, split)
    return manifest


def checker(cfg: DataConfig, manifest: dict) -> Checker:
    return Checker(cfg.root, manifest, cfg.verify)


def missing(path: Path, cfg: DataConfig) -> FileNotFoundError:
    """The error for a records file the manifest promises but the folder lacks."""
    return FileNotFoundError(
        f"{path}: missing (data.backend={cfg.backend!r} reads the "
        f"{datasets.get(cfg.dataset).reads(cfg.backend)!r} records); convert again: "
        f"{fmt.fix_command(None, cfg.dataset)}")


# ----------------------------------------------------------------------------- CIFAR
def split_positions(cfg: DataConfig, split: str, stored_count: int | None = None) -> np.ndarray:
    """Sorted positions in the stored split that `split` is drawn from (records/datasets.py:
    CIFAR's val is a fixed hold-out of cfg.val_size train images, seeded by cfg.split_seed)."""
    entry = datasets.get(cfg.dataset)
    if stored_count is None:
        manifest = fmt.read_manifest(cfg.root, cfg.dataset)
        stored_count = fmt.split_count(manifest, entry.stored_split(split))
    return entry.positions(split, stored_count, cfg.val_size, cfg.split_seed)


def load_cifar_arrays(cfg: DataConfig, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Stored `source` ("train"|"test") split: uint8 (N, H, W, 3) HWC RGB, int64 (N,),
    checked against the manifest (files, shapes, label range and per-class counts)."""
    manifest = open_records(cfg, "arrays", source)
    images_path, labels_path = (Path(cfg.root) / rel for rel in fmt.array_rels(source))
    images, labels = np.load(images_path), np.load(labels_path)
    checker(cfg, manifest).labels(labels, labels_path, source)
    return images, labels


def cifar_split(cfg: DataConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of a CIFAR split, after the train/val hold-out."""
    images, labels = load_cifar_arrays(cfg, datasets.get(cfg.dataset).stored_split(split))
    index = split_positions(cfg, split, stored_count=len(images))
    return images[index], labels[index]


# ----------------------------------------------------------------------------- webdataset
@dataclass(frozen=True)
class SampleTable:
    """Where every sample of one split lies: shard file, byte offset/size of its .jpg and .cls
    members (in shard order, then tar order)."""

    shards: tuple[str, ...]
    shard: np.ndarray  # (N,) int32, position in `shards`
    keys: tuple[str, ...]
    jpg_offset: np.ndarray  # (N,) int64
    jpg_size: np.ndarray
    cls_offset: np.ndarray
    cls_size: np.ndarray
    classes: int = 0  # labels must be in [0, classes) (0: unchecked)
    fix: str = "tools/convert.py"  # the command that rewrites the records

    def __len__(self) -> int:
        return len(self.keys)


def shard_paths(cfg: DataConfig, split: str) -> list[Path]:
    """The split's shards, checked against the manifest."""
    open_records(cfg, "webdataset", split)
    return sorted((Path(cfg.root) / fmt.shard_folder_rel(split)).glob("shard-*.tar"))


def _index_columns(index: Path):
    """(keys, [jpg offsets, jpg sizes, cls offsets, cls sizes]) of a shard index in the layout
    the converter writes (one sample a line: its .jpg member, then its .cls), parsed column by
    column (full ImageNet's 1,282 indexes warm: 1.1 s instead of 2.8 line by line); None for any
    other layout, which the general parser (records.format.read_shard_index) then reads or
    refuses with its reason."""
    header, _, body = index.read_text().partition("\n")
    tokens = body.split()
    n = len(tokens) // 8
    lines = body.count("\n") + (not body.endswith("\n"))
    if (header.split() != [fmt.SHARD_INDEX_VERSION, str(n)] or len(tokens) != 8 * n
            or lines != n or tokens[0::8] != ["jpg"] * n or tokens[4::8] != ["cls"] * n):
        return None
    keys = [name[:-4] for name in tokens[3::8]]
    if ([key + ".jpg" for key in keys] != tokens[3::8]
            or [key + ".cls" for key in keys] != tokens[7::8] or len(set(keys)) != n):
        return None
    numbers = [tokens[k::8] for k in (1, 2, 5, 6)]
    if not all((joined := "".join(column)).isascii() and joined.isdigit() for column in numbers):
        return None
    return keys, [np.fromstring(" ".join(column), dtype=np.int64, sep=" ") for column in numbers]


def _index_rows(path: str, index: Path):
    """The general parser's reading of one shard index, in _index_columns's form."""
    keys, rows = [], []
    for key, parts in fmt.read_shard_index(index).items():
        if "jpg" not in parts or "cls" not in parts:
            raise ValueError(f"{path}: sample {key!r} lacks a .jpg or .cls member "
                             f"(has {sorted(parts)})")
        keys.append(key)
        rows.append((*parts["jpg"], *parts["cls"]))
    return keys, list(np.asarray(rows, dtype=np.int64).reshape(-1, 4).T)


@lru_cache(maxsize=16)
def _sample_table(shards: tuple[Path, ...], stamp: tuple) -> SampleTable:
    del stamp  # only part of the cache key: a rewritten shard invalidates the cache
    shard_of, keys = [np.zeros(0, np.int32)], []
    columns = [[np.zeros(0, np.int64)] for _ in range(4)]
    for position, path in enumerate(shards):
        index = Path(fmt.shard_index_rel(str(path)))
        shard_keys, shard_columns = _index_columns(index) or _index_rows(str(path), index)
        shard_of.append(np.full(len(shard_keys), position, dtype=np.int32))
        keys.extend(shard_keys)
        for kept, new in zip(columns, shard_columns):
            kept.append(new)
    jo, js, co, cs = (np.concatenate(column) for column in columns)
    return SampleTable(tuple(str(p) for p in shards), np.concatenate(shard_of), tuple(keys),
                       jo, js, co, cs)


def sample_table(cfg: DataConfig, split: str) -> SampleTable:
    """The split's SampleTable (cached per process), from its shard indexes (their sample counts
    checked against the manifest by open_records)."""
    shards = tuple(shard_paths(cfg, split))
    stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in shards)
    manifest = fmt.read_manifest(cfg.root, cfg.dataset)
    return replace(_sample_table(shards, stamp), classes=len(manifest["classes"]),
                   fix=fmt.fix_command(manifest))


class ShardReader:
    """Thread-safe random access to samples: (jpeg bytes, label). Uses pread on one descriptor
    per shard, so worker threads and forked DataLoader workers can share it.

    stream (data.cache=stream, with the plan's windowed order): the first read of a shard not
    among the last AHEAD shards read asks the kernel to read the whole shard ahead
    (POSIX_FADV_WILLNEED): one long sequential read instead of a random read per sample."""

    AHEAD = 16  # shards remembered as announced; a window spans a few

    def __init__(self, table: SampleTable, stream: bool = False):
        self.table, self.stream = table, stream
        self._fds: dict[int, int] = {}
        self._announced: list[int] = []
        self._lock = threading.Lock()

    def _fd(self, shard: int) -> int:
        with self._lock:
            if shard not in self._fds:
                self._fds[shard] = os.open(self.table.shards[shard], os.O_RDONLY)
            fd = self._fds[shard]
            if self.stream and shard not in self._announced:
                self._announced = [*self._announced[-(self.AHEAD - 1):], shard]
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            return fd

    def __len__(self) -> int:
        return len(self.table)

    def read(self, i: int) -> tuple[bytes, int]:
        table = self.table
        fd = self._fd(int(table.shard[i]))
        jo, js, co, cs = (int(table.jpg_offset[i]), int(table.jpg_size[i]),
                          int(table.cls_offset[i]), int(table.cls_size[i]))
        start, end = min(jo, co), max(jo + js, co + cs)
        if end - start <= js + cs + 2048:  # neighbours in the tar: one read
            blob = os.pread(fd, end - start, start)
            jpg, cls = blob[jo - start:jo - start + js], blob[co - start:co - start + cs]
        else:
            jpg, cls = os.pread(fd, js, jo), os.pread(fd, cs, co)
        return jpg, self._label(i, cls)

    def _label(self, i: int, cls: bytes) -> int:
        table = self.table
        try:
            label = int(cls.decode("ascii").strip())
        except ValueError:
            label = None
        if label is None or (table.classes and not 0 <= label < table.classes):
            raise fmt.RecordsError(
                f"{table.shards[table.shard[i]]}: {table.keys[i]}.cls holds {cls[:20]!r}, not "
                f"a label in [0, {table.classes}); convert again: {table.fix}")
        return label

    def labels(self) -> np.ndarray:
        """Every sample's label, in table order. Each .cls member lies in a page of its own
        between JPEGs, so on a cold page cache this is one random read per sample: the next
        shard's label pages are asked for (POSIX_FADV_WILLNEED, which queues the reads and
        returns) while this shard's are read, so the disk serves many at once (100,000 samples
        on a cold disk: 1.1 s instead of 11.4)."""
        table = self.table
        shards = np.split(np.arange(len(self)), np.flatnonzero(np.diff(table.shard)) + 1)
        labels = np.empty(len(self), dtype=np.int64)
        self._announce_labels(shards[0])
        for k, rows in enumerate(shards):
            if k + 1 < len(shards):
                self._announce_labels(shards[k + 1])
            labels[rows] = [self.read_label(int(i)) for i in rows]
        return labels

    def _announce_labels(self, rows: np.ndarray) -> None:
        if not len(rows) or not hasattr(os, "posix_fadvise"):
            return
        fd = self._fd(int(self.table.shard[rows[0]]))
        for offset, size in zip(self.table.cls_offset[rows].tolist(),
                                self.table.cls_size[rows].tolist()):
            os.posix_fadvise(fd, offset, size, os.POSIX_FADV_WILLNEED)

    def read_label(self, i: int) -> int:
        table = self.table
        fd = self._fd(int(table.shard[i]))
        return self._label(i, os.pread(fd, int(table.cls_size[i]), int(table.cls_offset[i])))

    def close(self):
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __getstate__(self):  # pickled into spawned workers: reopen there
        return {"table": self.table, "stream": self.stream}

    def __setstate__(self, state):
        self.__init__(state["table"], state["stream"])
