"""The one record checker: are the records on disk the ones their manifest describes?

Used by every loader when it is built (pipelines/readers.py: the files of the split and format
it reads), by `tools/convert.py verify` (`verify`: every file of every format and split, full
mode) and by the tests.

Cheap (the loaders' default, data.verify=cheap): per file, its size and a sampled digest
(records/format.py's sampled_digest, recorded in the manifest's "checks" when it was written):
a truncated file, a zeroed region larger than the gaps between blocks, or a file swapped for
another fails. Then what each format's headers say: the .npy shapes and dtypes, the .beton
sample count, the shards and their indexes' sample counts; the label range and the per-class
counts where the labels are at hand. A few reads per file, whatever its size.
Full (data.verify=full, and verify): also every file's sha256.

A failure is a RecordsError that names the file, what differs, and the command that rewrites
the records (a rerun keeps the files that still verify).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from records import datasets
from records import format as fmt

VERIFY_MODES = ("cheap", "full")
_passed: set = set()  # (path, size, mtime, mode) already checked in this process


def verify(root: str | Path) -> list[str]:
    """Every problem of a converted dataset folder (empty: it matches its manifest): each
    format's files for each stored split, sha256 included, their counts, and the labels of the
    arrays against the manifest's per-class counts."""
    root = Path(root)
    manifest = fmt.read_manifest(root)
    check, problems = Checker(root, manifest, "full"), []
    for format_name in manifest["formats"]:
        for split in check.dataset.stored:
            try:
                check.split(format_name, split)
                if format_name == "arrays":
                    labels = root / fmt.array_rels(split)[1]
                    check.labels(np.load(labels), labels, split)
            except (fmt.RecordsError, OSError) as error:
                problems.append(str(error))
    return problems


class Checker:
    """Checks of one dataset folder against its manifest; errors name the file and the fix."""

    def __init__(self, root: str | Path, manifest: dict, mode: str = "cheap"):
        if mode not in VERIFY_MODES:
            raise ValueError(f"data.verify={mode!r}: expected one of {', '.join(VERIFY_MODES)}")
        self.root, self.manifest, self.mode = Path(root), manifest, mode
        self.dataset = datasets.get(manifest["dataset"])
        self.fix = fmt.fix_command(manifest)

    def fail(self, path, problem: str) -> fmt.RecordsError:
        return fmt.RecordsError(f"{path}: {problem}; convert again: {self.fix}")

    def files(self, rels) -> None:
        """Each file exists with the manifest's size and sampled digest (or sha256, full)."""
        for rel in rels:
            path = self.root / rel
            try:
                stat = path.stat()
            except FileNotFoundError:
                raise self.fail(path, f"missing (listed in {fmt.MANIFEST})") from None
            key = (str(path), stat.st_size, stat.st_mtime_ns, self.mode)
            if key in _passed:
                continue
            want = self.manifest["checks"].get(rel)
            if want is None:
                raise self.fail(path, f"not listed in {fmt.MANIFEST}'s checks")
            if stat.st_size != want["size"]:
                raise self.fail(path, f"{stat.st_size} bytes, {fmt.MANIFEST} says "
                                      f"{want['size']} (truncated or changed)")
            if fmt.sampled_digest(path) != want["sample"]:
                raise self.fail(path, f"content differs from {fmt.MANIFEST} (sampled digest)")
            if self.mode == "full" and fmt.sha256_file(path) != self.manifest["files"][rel]:
                raise self.fail(path, f"content differs from {fmt.MANIFEST} (sha256)")
            _passed.add(key)

    def rels(self, format_name: str, split: str) -> list[str]:
        """The files of `format_name` that hold the stored `split`."""
        if format_name == "arrays":
            return list(fmt.array_rels(split))
        if format_name == "ffcv":
            return [fmt.beton_rel(split)]
        if format_name == "webdataset":
            folder = fmt.shard_folder_rel(split) + "/"
            return [rel for rel in self.manifest["files"] if rel.startswith(folder)]
        raise ValueError(f"unknown format {format_name!r}")

    def split(self, format_name: str, split: str) -> None:
        """Every file of `format_name` for the stored `split`, and what its headers say."""
        count = fmt.split_count(self.manifest, split)
        rels = self.rels(format_name, split)
        if format_name == "webdataset":
            folder = fmt.shard_folder_rel(split)
            on_disk = [p.relative_to(self.root).as_posix()
                       for p in (self.root / folder).glob("shard-*.tar")]
            extra = sorted(set(on_disk) - set(rels))
            if extra:
                raise self.fail(self.root / extra[0], f"a shard {fmt.MANIFEST} does not list")
            shards = self.manifest["splits"][split].get("shards")
            tars = [rel for rel in rels if rel.endswith(".tar")]
            if shards is not None and len(tars) != shards:
                raise self.fail(self.root / folder, f"{len(tars)} shards listed, {fmt.MANIFEST} "
                                                    f"says {shards}")
            unindexed = [rel for rel in tars if fmt.shard_index_rel(rel) not in rels]
            if unindexed:
                raise self.fail(self.root / unindexed[0], f"a shard without its shard index "
                                                          f"{fmt.shard_index_rel(unindexed[0])}")
        if not rels:
            raise self.fail(self.root / fmt.shard_folder_rel(split), "no shards listed")
        self.files(rels)
        if format_name == "arrays":
            images, labels = rels
            self.npy(images, (count, *self.dataset.image_size, 3), np.uint8)
            self.npy(labels, (count,), np.int64)
        elif format_name == "ffcv":
            self.count(rels[0], fmt.beton_count(self.root / rels[0]), split)
        elif format_name == "webdataset":
            self.count(fmt.shard_folder_rel(split) + "/*.idx",
                       sum(self.shard_index_count(rel) for rel in rels if rel.endswith(".idx")),
                       split)

    def shard_index_count(self, rel: str) -> int:
        """Samples a shard index lists: its header (cheap), checked against its lines (full)."""
        path = self.root / rel
        if self.mode == "full":
            return len(fmt.read_shard_index(path))
        return fmt.shard_index_count(path)

    def count(self, rel: str, samples: int, split: str) -> None:
        """`samples` (what the file at `rel` holds) against the manifest's count of `split`."""
        count = fmt.split_count(self.manifest, split)
        if samples != count:
            raise self.fail(self.root / rel, f"{samples} samples, {fmt.MANIFEST} says "
                                             f"{split} has {count}")

    def npy(self, rel: str, shape: tuple, dtype) -> None:
        path = self.root / rel
        try:
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read = {(1, 0): np.lib.format.read_array_header_1_0,
                        (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read is None:
                    raise ValueError(f"format version {version}")
                got_shape, _, got_dtype = read(f)
        except ValueError as error:
            raise self.fail(path, f"not a .npy file ({error})") from None
        if tuple(got_shape) != shape or np.dtype(got_dtype) != np.dtype(dtype):
            raise self.fail(path, f"holds {np.dtype(got_dtype)} {tuple(got_shape)}, "
                                  f"{fmt.MANIFEST} says {np.dtype(dtype)} {shape}")

    def labels(self, labels: np.ndarray, where, split: str) -> None:
        """Labels in [0, classes) with the manifest's per-class counts."""
        classes = len(self.manifest["classes"])
        if len(labels) and (labels.min() < 0 or labels.max() >= classes):
            bad = int(np.flatnonzero((labels < 0) | (labels >= classes))[0])
            raise self.fail(where, f"label {int(labels[bad])} at sample {bad} is outside "
                                   f"[0, {classes})")
        per_class = self.manifest["splits"][split].get("per_class")
        if per_class and np.bincount(labels, minlength=classes).tolist() != per_class:
            raise self.fail(where, f"per-class counts of {split} differ from {fmt.MANIFEST}'s")
