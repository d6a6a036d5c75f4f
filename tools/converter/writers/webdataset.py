"""The "webdataset" record writer: tar shards of images and their shard indexes.

Each shard index (records.format: DALI's wds2idx `v1.2` text format, which
fn.readers.webdataset takes as `index_paths`) is written from offsets recorded while writing the
tar, so no second pass.
"""
from __future__ import annotations

import io
import tarfile

from records import format as fmt

from .atomic import HashingWriter, OutputDir

BLOCK = tarfile.BLOCKSIZE


class ShardWriter:
    """One webdataset shard: `<key>.jpg` + `<key>.cls` per sample, plus its shard index (.idx)."""

    def __init__(self, out: OutputDir, rel_tar: str):
        self.out, self.rel_tar = out, rel_tar
        self.rel_index = fmt.shard_index_rel(rel_tar)
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
        parts = [(ext, *self._member(f"{key}.{ext}", data))
                 for ext, data in (("jpg", jpeg), ("cls", str(label).encode("ascii")))]
        self._index.append(fmt.shard_index_line(key, parts))

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
        tmp_index = self.out.tmp_path(self.rel_index)
        tmp_index.write_text(fmt.shard_index_text(self._index))
        shas[self.rel_index] = self.out.commit(self.rel_index, tmp_index, samples=len(self))
        return shas

