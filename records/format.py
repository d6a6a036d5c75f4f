"""The record format: what tools/convert.py writes and pipelines/ read, owned in one place.

A dataset folder DIR/<dataset>/ holds, per stored split (records/datasets.py: CIFAR train,
test; ImageNet and folder train, val), the files of each format it was converted to, and
manifest.json, written last:

  arrays/{split}_images.npy, {split}_labels.npy   uint8 (N, H, W, 3) RGB, int64 (N,)
  webdataset/{split}/shard-NNNNNN.tar (+ .idx)    <key>.jpg + <key>.cls per sample
  ffcv/{split}.beton                              fields "image" and "label"

Formats are named by what they are; which dataset has which, and which backend reads which, is
records/datasets.py's. This module has no torch or ffcv dependency: converters, loaders and tests
all import it. records/check.py checks records against their manifest.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from records import datasets

# Of the manifest and the layout above; older records must be converted again.
# 3: "checks" (size and sampled digest of every file) for the loaders' cheap check.
VERSION = 3
MANIFEST = "manifest.json"
SHARD_INDEX_VERSION = "v1.2"  # DALI's wds2idx text format, read by fn.readers.webdataset
SAMPLE_BLOCKS, BLOCK = 8, 4096  # a file's sampled digest: 8 blocks of 4 KiB spread over it
REQUIRED = ("dataset", "version", "formats", "classes", "splits", "files", "checks", "skipped")
# FFCV's file header (ffcv.types.HeaderType): sample counts without importing ffcv or torch.
BETON_HEADER = np.dtype([("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"),
                         ("num_samples", "<u8"), ("alloc_table_ptr", "<u8")], align=True)


class RecordsError(ValueError):
    """Records that are missing, stale or inconsistent; the message names the file and the fix."""


def fix_command(manifest: dict | None, dataset: str | None = None) -> str:
    """The command that rewrites a dataset's records (for a folder dataset, its name and source
    come from the manifest when there is one)."""
    manifest = manifest or {}
    entry = datasets.DATASETS.get(manifest.get("dataset", dataset))
    if entry is None:
        return "tools/convert.py"
    source = manifest.get("source")
    if not entry.named or not isinstance(source, dict):
        return entry.make_target()
    return entry.make_target(manifest.get("name"), source.get("path"))


def parse_formats(dataset: str, formats) -> tuple[str, ...]:
    """A --formats value (comma string or sequence) checked against the dataset's formats."""
    allowed = datasets.get(dataset).formats
    names = tuple(f.strip() for f in formats.split(",")) if isinstance(formats, str) \
        else tuple(formats)
    unknown = [f for f in names if f not in allowed]
    if unknown or not names:
        hint = (" ('dali' records are now named by what they are: 'arrays' for CIFAR, "
                "'webdataset' for ImageNet)" if "dali" in unknown else "")
        raise ValueError(f"formats {list(names)} for {dataset}: expected a non-empty subset of "
                         f"{', '.join(allowed)}{hint}")
    return tuple(dict.fromkeys(names))


# ----------------------------------------------------------------------------- paths
def beton_rel(split: str) -> str:
    return f"ffcv/{split}.beton"


def array_rels(split: str) -> tuple[str, str]:
    """(images, labels) .npy paths of a CIFAR split, relative to the dataset folder."""
    return f"arrays/{split}_images.npy", f"arrays/{split}_labels.npy"


def shard_folder_rel(split: str) -> str:
    return f"webdataset/{split}"


def shard_rel(split: str, number: int) -> str:
    return f"{shard_folder_rel(split)}/shard-{number:06d}.tar"


def shard_index_rel(tar_rel: str) -> str:
    """The shard index beside a shard (.idx)."""
    return tar_rel[: -len(".tar")] + ".idx"


def beton_count(path: str | Path) -> int:
    """Samples in a .beton, from its header."""
    header = np.fromfile(path, dtype=BETON_HEADER, count=1)
    if len(header) != 1:
        raise RecordsError(f"{path}: too short for an FFCV header")
    return int(header[0]["num_samples"])


def format_of(rel: str) -> str:
    """The format a manifest file entry belongs to ("arrays/train_images.npy" -> "arrays")."""
    return rel.split("/", 1)[0]


# ----------------------------------------------------------------------------- shard index
# A shard index (<shard>.idx) lists where each sample's members lie in its shard, in DALI's
# wds2idx text format (fn.readers.webdataset's index_paths): no reader scans a tar.
def shard_index_text(lines: list[str]) -> str:
    """A shard index: header `v1.2 <samples>`, then one line per sample of
    `<ext> <data offset> <size> <name>` groups (see `shard_index_line`)."""
    return f"{SHARD_INDEX_VERSION} {len(lines)}\n" + "".join(line + "\n" for line in lines)


def shard_index_line(key: str, parts: list[tuple[str, int, int]]) -> str:
    """One sample's line of a shard index from (ext, data offset, size) of each member."""
    return " ".join(f"{ext} {offset} {size} {key}.{ext}" for ext, offset, size in parts)


def shard_index_count(path: Path) -> int:
    """The sample count a shard index's header states (one line read)."""
    with open(path) as f:
        header = f.readline().split()
    if len(header) != 2 or header[0] != SHARD_INDEX_VERSION or not header[1].isdigit():
        raise RecordsError(f"{path}: not a {SHARD_INDEX_VERSION} shard index")
    return int(header[1])


def read_shard_index(path: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """{key: {ext: (offset, size)}} in shard order, checked against the header's count."""
    path = Path(path)
    lines = path.read_text().splitlines()
    if not lines or not lines[0].startswith(f"{SHARD_INDEX_VERSION} "):
        raise RecordsError(f"{path}: not a {SHARD_INDEX_VERSION} shard index")
    members: dict[str, dict[str, tuple[int, int]]] = {}
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields or len(fields) % 4:
            raise RecordsError(f"{path}:{number}: expected '<ext> <offset> <size> <name>' "
                               f"groups, got {line!r}")
        for ext, offset, size, name in zip(*[iter(fields)] * 4):
            members.setdefault(name.rpartition(".")[0], {})[ext] = (int(offset), int(size))
    header = lines[0].split()[1]
    if not header.isdigit() or int(header) != len(members) or len(members) != len(lines) - 1:
        raise RecordsError(f"{path}: header says {header} samples, lists {len(members)}")
    return members


# ----------------------------------------------------------------------------- manifest
def make_manifest(*, dataset: str, formats, source, settings: dict, classes: list[str],
                  splits: dict[str, dict], files: dict[str, str] | None = None,
                  root: str | Path | None = None, skipped: list[dict] | None = None,
                  fingerprint: str | None = None, **extra) -> dict:
    """A manifest in the current schema. splits: {split: {"count": n, "per_class": [...]}};
    files: {relative path: sha256} of every output (verify re-checks them), found under `root`
    (the dataset folder), which gives their "checks" (file_checks)."""
    files = dict(sorted((files or {}).items()))
    if files and root is None:
        raise ValueError("make_manifest: files need root= (the folder holding them)")
    manifest = {
        "dataset": dataset, "version": VERSION, "formats": list(parse_formats(dataset, formats)),
        "source": source, "settings": settings, "classes": list(classes), "splits": splits,
        "files": files, "checks": file_checks(root, files) if files else {},
        "skipped": list(skipped or []), "fingerprint": fingerprint, **extra,
    }
    validate(manifest, MANIFEST)
    return manifest


def validate(manifest, where) -> dict:
    """The manifest, or RecordsError naming `where` and what is wrong."""
    if not isinstance(manifest, dict):
        raise RecordsError(f"{where}: expected a JSON object")
    missing = [key for key in REQUIRED if key not in manifest]
    if "version" in manifest and manifest["version"] != VERSION:
        raise RecordsError(f"{where}: records of format version {manifest['version']!r}, this "
                           f"code reads version {VERSION}; convert again: {fix_command(manifest)}")
    if missing:
        raise RecordsError(f"{where}: missing key(s) {', '.join(missing)}")
    dataset = manifest["dataset"]
    try:
        parse_formats(dataset, manifest["formats"])
    except ValueError as error:
        raise RecordsError(f"{where}: {error}") from None
    entry = datasets.DATASETS[dataset]
    if not isinstance(manifest["checks"], dict) or set(manifest["checks"]) != set(
            manifest["files"]):
        raise RecordsError(f"{where}: checks must list exactly the files")
    if entry.mean is None and not _valid_stats(manifest.get("stats")):
        raise RecordsError(f"{where}: no valid \"stats\" (per-channel mean and std, 3 each); "
                           f"convert again: {fix_command(manifest)}")
    for split in entry.stored:
        info = manifest["splits"].get(split)
        if not isinstance(info, dict) or not isinstance(info.get("count"), int):
            raise RecordsError(f"{where}: no splits.{split}.count")
        per_class = info.get("per_class")
        if not isinstance(per_class, list) or (per_class and sum(per_class) != info["count"]):
            raise RecordsError(f"{where}: splits.{split}.per_class must be a list summing to "
                               f"its count {info['count']}")
    return manifest


def _valid_stats(stats) -> bool:
    return (isinstance(stats, dict) and all(
        isinstance(stats.get(key), list) and len(stats[key]) == 3 for key in ("mean", "std"))
        and min(stats["std"]) > 0)


def read_manifest(root: str | Path, dataset: str | None = None) -> dict:
    """DIR/<dataset>/manifest.json, validated; `dataset` (if given) must be the one it holds."""
    path = Path(root) / MANIFEST
    fix = fix_command(None, dataset)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no records here (data.root must be a dataset folder "
                                f"written by tools/convert.py, e.g. data/records/cifar10); "
                                f"write them with: {fix}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RecordsError(f"{path}: not valid JSON ({error}); convert again: {fix}") from None
    validate(manifest, path)
    if dataset is not None and manifest["dataset"] != dataset:
        raise RecordsError(f"{path}: holds {manifest['dataset']!r} but data.dataset={dataset!r}")
    return manifest


def sampled_digest(path: str | Path) -> str:
    """blake2b of the file size and SAMPLE_BLOCKS blocks of BLOCK bytes spread over the file."""
    size = os.path.getsize(path)
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as f:
        for offset in np.linspace(0, max(0, size - BLOCK), SAMPLE_BLOCKS).astype(np.int64):
            digest.update(os.pread(f.fileno(), BLOCK, int(offset)))
    return digest.hexdigest()


def file_checks(root: str | Path, files) -> dict[str, dict]:
    """The manifest's "checks": {file: {"size", "sample"}} of the files as they are now (the
    loaders' cheap check, records/check.py, compares them)."""
    root = Path(root)
    return {rel: {"size": (root / rel).stat().st_size, "sample": sampled_digest(root / rel)}
            for rel in sorted(files)}


def sha256_file(path: str | Path) -> str:
    """The sha256 a manifest lists for a file ("files")."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_json_atomic(path: str | Path, data) -> Path:
    """Write JSON through a temporary file, fsync and rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def write_manifest(root: str | Path, manifest: dict) -> Path:
    """Validate, then write atomically."""
    path = Path(root) / MANIFEST
    validate(manifest, path)
    return write_json_atomic(path, manifest)


def split_count(manifest: dict, split: str) -> int:
    return int(manifest["splits"][split]["count"])


def require_format(root: str | Path, manifest: dict, backend: str,
                   needed: str | None = None) -> str | None:
    """The format `backend` reads (or `needed`), checked to be among the converted ones
    (None: synthetic reads none)."""
    needed = needed or datasets.DATASETS[manifest["dataset"]].reads(backend)
    if needed is not None and needed not in manifest["formats"]:
        raise FileNotFoundError(
            f"{Path(root)}: data.backend={backend!r} reads the {needed!r} records, but this "
            f"folder was converted to {', '.join(manifest['formats'])} only; add them with: "
            f"{fix_command(manifest)} (its --formats default is every format)")
    return needed
