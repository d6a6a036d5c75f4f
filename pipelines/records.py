"""Reading the records tools/convert.py writes, and the per-epoch/per-rank sample plan.

Shared by every backend: the manifest, CIFAR arrays and the fixed train/val hold-out, the
webdataset shard index (byte offsets of each sample's JPEG and label), and `EpochPlan`, which
turns (n, batch size, rank, world size, seed, epoch, start) into the batches one rank reads.
"""
from __future__ import annotations

import json
import os
import tarfile
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipelines.ops import epoch_permutation
from pipelines.spec import DataConfig

MANIFEST_VERSION = 1


# ----------------------------------------------------------------------------- manifest
def read_manifest(root: str | Path, dataset: str | None = None) -> dict:
    """The dataset folder's manifest.json, checked for version, dataset name and splits."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; is data.root a dataset folder written by "
                                "tools/convert.py (e.g. data/records/cifar10)?")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    for key in ("dataset", "version", "classes", "splits"):
        if key not in manifest:
            raise ValueError(f"{path}: missing key {key!r}")
    if manifest["version"] != MANIFEST_VERSION:
        raise ValueError(f"{path}: version {manifest['version']!r}, this code reads "
                         f"version {MANIFEST_VERSION}; re-run tools/convert.py")
    if dataset is not None and manifest["dataset"] != dataset:
        raise ValueError(f"{path}: holds {manifest['dataset']!r} but data.dataset={dataset!r}")
    return manifest


def split_count(manifest: dict, split: str, root) -> int:
    try:
        return int(manifest["splits"][split]["count"])
    except KeyError as error:
        raise ValueError(f"{Path(root) / 'manifest.json'}: no splits.{split}.count") from error


# ----------------------------------------------------------------------------- CIFAR
def cifar_source_split(split: str) -> str:
    """The official split a CIFAR split is drawn from: train and val from train, test from test."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"CIFAR split={split!r}: expected train, val or test")
    return "test" if split == "test" else "train"


def cifar_split_indices(cfg: DataConfig, split: str, n_train: int | None = None) -> np.ndarray:
    """Sorted indices into the official array of `cifar_source_split(split)`: "val" is a fixed
    random hold-out of cfg.val_size train images (cfg.split_seed), "train" the rest."""
    source = cifar_source_split(split)
    manifest = read_manifest(cfg.root, cfg.dataset)
    count = split_count(manifest, source, cfg.root)
    if source == "test":
        return np.arange(count, dtype=np.int64)
    n_train = count if n_train is None else n_train
    if not 0 <= cfg.val_size < n_train:
        raise ValueError(f"data.val_size={cfg.val_size}: must be in [0, {n_train})")
    order = np.random.default_rng(cfg.split_seed).permutation(n_train)
    held_out = np.sort(order[:cfg.val_size])
    return held_out if split == "val" else np.sort(order[cfg.val_size:])


def load_cifar_arrays(root: str | Path, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Official `source` ("train"|"test") split: uint8 (N, 32, 32, 3) HWC RGB, int64 (N,)."""
    folder = Path(root) / "dali"
    images_path, labels_path = folder / f"{source}_images.npy", folder / f"{source}_labels.npy"
    for path in (images_path, labels_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; convert with tools/convert.py "
                                    "--formats dali (the native backend reads these arrays)")
    images, labels = np.load(images_path), np.load(labels_path)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"{images_path}: expected uint8 (N, H, W, 3), got "
                         f"{images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{labels_path}: shape {labels.shape} does not match "
                         f"{images.shape[0]} images in {images_path}")
    return images, labels.astype(np.int64)


def cifar_split(cfg: DataConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of a CIFAR split, after the train/val hold-out."""
    images, labels = load_cifar_arrays(cfg.root, cifar_source_split(split))
    index = cifar_split_indices(cfg, split, n_train=len(images))
    return images[index], labels[index]


# ----------------------------------------------------------------------------- webdataset
@dataclass(frozen=True)
class ShardIndex:
    """Where every sample of one split lies: shard file, byte offset/size of its .jpg and .cls
    members (in shard order, then tar order)."""

    shards: tuple[str, ...]
    shard: np.ndarray  # (N,) int32, position in `shards`
    keys: tuple[str, ...]
    jpg_offset: np.ndarray  # (N,) int64
    jpg_size: np.ndarray
    cls_offset: np.ndarray
    cls_size: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)


def shard_paths(root: str | Path, split: str) -> list[Path]:
    folder = Path(root) / "dali" / split
    shards = sorted(folder.glob("shard-*.tar"))
    if not shards:
        raise FileNotFoundError(f"{folder}: no shard-*.tar files; convert with tools/convert.py "
                                "--formats dali")
    return shards


def _scan_shard(path: Path):
    """{key: {ext: (offset, size)}} in tar order: from the shard's webdataset index (v1.2, as
    DALI's wds2idx writes it) when there is one, else from the tar headers."""
    members: dict[str, dict[str, tuple[int, int]]] = {}
    index = path.with_suffix(".idx")
    if index.is_file():
        lines = index.read_text().splitlines()
        if not lines or not lines[0].startswith("v1.2 "):
            raise ValueError(f"{index}: not a v1.2 webdataset index")
        for number, line in enumerate(lines[1:], start=2):
            fields = line.split()
            if not fields or len(fields) % 4:
                raise ValueError(f"{index}:{number}: expected '<ext> <offset> <size> <name>' "
                                 f"groups, got {line!r}")
            for ext, offset, size, name in zip(*[iter(fields)] * 4):
                key = name.rpartition(".")[0]
                members.setdefault(key, {})[ext] = (int(offset), int(size))
        if len(members) != int(lines[0].split()[1]):
            raise ValueError(f"{index}: header says {lines[0].split()[1]} samples, lists "
                             f"{len(members)}")
        return members
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, dot, ext = info.name.rpartition(".")
            if not dot:
                raise ValueError(f"{path}: member {info.name!r} has no extension")
            members.setdefault(key, {})[ext] = (info.offset_data, info.size)
    return members


@lru_cache(maxsize=16)
def _shard_index(root: str, split: str, stamp: tuple) -> ShardIndex:
    del stamp  # only part of the cache key: a rewritten shard invalidates the cache
    shards = shard_paths(root, split)
    shard_of, keys, columns = [], [], {name: [] for name in ("jo", "js", "co", "cs")}
    for position, path in enumerate(shards):
        for key, parts in _scan_shard(path).items():
            if "jpg" not in parts or "cls" not in parts:
                raise ValueError(f"{path}: sample {key!r} lacks a .jpg or .cls member "
                                 f"(has {sorted(parts)})")
            shard_of.append(position)
            keys.append(key)
            for name, value in zip(("jo", "js", "co", "cs"), (*parts["jpg"], *parts["cls"])):
                columns[name].append(value)
    as64 = {name: np.asarray(values, dtype=np.int64) for name, values in columns.items()}
    return ShardIndex(tuple(str(p) for p in shards), np.asarray(shard_of, dtype=np.int32),
                      tuple(keys), as64["jo"], as64["js"], as64["co"], as64["cs"])


def shard_index(root: str | Path, split: str) -> ShardIndex:
    """The split's ShardIndex (cached per process), checked against the manifest count."""
    manifest = read_manifest(root)
    shards = shard_paths(root, split)
    stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in shards)
    index = _shard_index(str(root), split, stamp)
    expected = split_count(manifest, split, root)
    if len(index) != expected:
        raise ValueError(f"{Path(root) / 'dali' / split}: {len(index)} samples in the shards, "
                         f"manifest.json says {expected}")
    return index


class ShardReader:
    """Thread-safe random access to samples: (jpeg bytes, label). Uses pread on one descriptor
    per shard, so worker threads and forked DataLoader workers can share it."""

    def __init__(self, index: ShardIndex):
        self.index = index
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def _fd(self, shard: int) -> int:
        with self._lock:
            if shard not in self._fds:
                self._fds[shard] = os.open(self.index.shards[shard], os.O_RDONLY)
            return self._fds[shard]

    def __len__(self) -> int:
        return len(self.index)

    def read(self, i: int) -> tuple[bytes, int]:
        index = self.index
        fd = self._fd(int(index.shard[i]))
        jo, js, co, cs = (int(index.jpg_offset[i]), int(index.jpg_size[i]),
                          int(index.cls_offset[i]), int(index.cls_size[i]))
        start, end = min(jo, co), max(jo + js, co + cs)
        if end - start <= js + cs + 2048:  # neighbours in the tar: one read
            blob = os.pread(fd, end - start, start)
            jpg, cls = blob[jo - start:jo - start + js], blob[co - start:co - start + cs]
        else:
            jpg, cls = os.pread(fd, js, jo), os.pread(fd, cs, co)
        try:
            label = int(cls.decode("ascii").strip())
        except ValueError as error:
            raise ValueError(f"{index.shards[index.shard[i]]}: {index.keys[i]}.cls is not an "
                             f"integer: {cls[:20]!r}") from error
        return jpg, label

    def labels(self) -> np.ndarray:
        return np.asarray([self.read_label(i) for i in range(len(self))], dtype=np.int64)

    def read_label(self, i: int) -> int:
        index = self.index
        fd = self._fd(int(index.shard[i]))
        return int(os.pread(fd, int(index.cls_size[i]), int(index.cls_offset[i])).strip())

    def close(self):
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __getstate__(self):  # pickled into spawned workers: reopen there
        return {"index": self.index}

    def __setstate__(self, state):
        self.__init__(state["index"])


# ----------------------------------------------------------------------------- sharding
def shard_indices(n: int, rank: int, world_size: int, seed: int, epoch: int, shuffle: bool,
                  drop_last: bool, batch_size: int) -> np.ndarray:
    """Positions 0..n-1 that `rank` reads in `epoch`, in order.

    shuffle/drop_last (train): one permutation of (seed, epoch) shared by all ranks, cut to a
    multiple of world_size * batch_size, dealt round-robin, so every rank gets the same number of
    full batches and the ranks' samples are disjoint. Otherwise (eval): contiguous, in order,
    nothing dropped; the shares differ by at most one sample and cover 0..n-1.
    """
    if n < 0 or batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard_indices(n={n}, rank={rank}, world_size={world_size}, "
                         f"batch_size={batch_size}): invalid")
    order = epoch_permutation(n, seed, epoch).numpy() if shuffle else np.arange(n)
    if drop_last:
        per_rank = (n // world_size) // batch_size * batch_size
        return order[:per_rank * world_size][rank::world_size]
    return np.array_split(order, world_size)[rank]


class EpochPlan:
    """The batches of one rank: `set_epoch(epoch, start)` picks the epoch's order and the batch
    to begin with (resume); `batches()` yields (batch number, sample positions). `start` applies
    to the next pass only; the epoch stays until set_epoch is called again."""

    def __init__(self, n: int, batch_size: int, rank: int, world_size: int, seed: int,
                 shuffle: bool, drop_last: bool):
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.epoch, self.start = 0, 0
        if drop_last and n // world_size < batch_size:
            raise ValueError(f"{n} samples over {world_size} rank(s) make no full batch of "
                             f"{batch_size}; lower data.batch_size")

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if epoch < 0 or not 0 <= start <= len(self):
            raise ValueError(f"set_epoch(epoch={epoch}, start={start}): need epoch >= 0 and "
                             f"0 <= start <= {len(self)} batches")
        self.epoch, self.start = int(epoch), int(start)

    def indices(self) -> np.ndarray:
        return shard_indices(self.n, self.rank, self.world_size, self.seed, self.epoch,
                             self.shuffle, self.drop_last, self.batch_size)

    def __len__(self) -> int:
        share = self.n // self.world_size + (self.rank < self.n % self.world_size)
        if self.drop_last:
            return (self.n // self.world_size) // self.batch_size
        return -(-share // self.batch_size)

    def batches(self):
        """(batch number, positions) from `start`; resets start to 0 for the following pass."""
        order, start, size = self.indices(), self.start, self.batch_size
        self.start = 0
        for number in range(start, len(self)):
            yield number, order[number * size:(number + 1) * size]
