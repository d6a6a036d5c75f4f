"""DALI-side records: .npy arrays (CIFAR) and webdataset tar shards with their index (ImageNet).

The index is the `v1.2` text format of DALI's wds2idx, which fn.readers.webdataset takes as
`index_paths`: a header `v1.2 <samples>`, then per sample `<ext> <data offset> <size> <name>` for
each component. We write it from offsets recorded while writing the tar, so no second pass.
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

from .atomic import HashingWriter, OutputDir

INDEX_VERSION = "v1.2"
BLOCK = tarfile.BLOCKSIZE


def write_npy(out: OutputDir, rel: str, array: np.ndarray) -> str:
    tmp = out.tmp_path(rel)
    with open(tmp, "wb") as f:  # a file object: np.save(path) would append ".npy" to tmp
        np.save(f, array)
    return out.commit(rel, tmp, shape=list(array.shape), dtype=str(array.dtype))


class ShardWriter:
    """One webdataset shard: `<key>.jpg` + `<key>.cls` per sample, plus its index file."""

    def __init__(self, out: OutputDir, rel_tar: str):
        self.out, self.rel_tar = out, rel_tar
        self.rel_idx = rel_tar[: -len(".tar")] + ".idx"
        self.tmp = out.tmp_path(rel_tar)
        self._file = HashingWriter(self.tmp)
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self._index: list[str] = []

    def _member(self, name: str, data: bytes) -> tuple[int, int]:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0  # deterministic bytes
        self._tar.addfile(info, io.BytesIO(data))
        padded = -(-len(data) // BLOCK) * BLOCK
        return self._file.tell() - padded, len(data)

    def add(self, key: str, jpeg: bytes, label: int) -> None:
        parts = []
        for ext, data in (("jpg", jpeg), ("cls", str(label).encode("ascii"))):
            offset, size = self._member(f"{key}.{ext}", data)
            parts.append(f"{ext} {offset} {size} {key}.{ext}")
        self._index.append(" ".join(parts))

    def __len__(self) -> int:
        return len(self._index)

    def discard(self) -> None:
        self._tar.close()
        self._file.close()
        self.tmp.unlink()

    def commit(self, **info) -> dict[str, str]:
        """Close the tar and rename tar then index; returns {rel: sha256}."""
        self._tar.close()
        self._file.close()
        shas = {self.rel_tar: self.out.commit(self.rel_tar, self.tmp, self._file.hexdigest(),
                                              samples=len(self), **info)}
        tmp_idx = self.out.tmp_path(self.rel_idx)
        tmp_idx.write_text(f"{INDEX_VERSION} {len(self)}\n" + "".join(
            line + "\n" for line in self._index))
        shas[self.rel_idx] = self.out.commit(self.rel_idx, tmp_idx, samples=len(self))
        return shas


def index_count(path: Path) -> int:
    """Samples listed by a webdataset index file (checked against its own header)."""
    lines = path.read_text().splitlines()
    version, _, count = lines[0].partition(" ") if lines else ("", "", "")
    if version != INDEX_VERSION or not count.isdigit() or int(count) != len(lines) - 1:
        raise ValueError(f"{path}: not a {INDEX_VERSION} webdataset index with a matching count")
    return int(count)
