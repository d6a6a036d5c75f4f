"""Atomic, resumable outputs.

Every output is written as `<name>.tmp-<pid>`, fsynced and renamed; then a small record
`.progress/<name>.json` (fingerprint of source+settings, size, sha256) lets a rerun skip it once
its sha256 checks again. The manifest is written last, so a killed run never looks complete; a
rerun keeps the previous manifest until it changes or deletes a file that manifest lists (then
removes it first), so a complete dataset stays loadable through a rerun that is killed.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path

from records import format as fmt
from records.format import MANIFEST, sha256_file, write_json_atomic
from records.lock import LockHeld, PidLock

TMP_MARK = ".tmp-"
PROGRESS = ".progress"
# Test hook: seconds to sleep after each committed output, so a test can kill a run mid-way.
SLEEP_ENV = "RESPIPE_CONVERT_TEST_SLEEP"


# Bump when a code change alters what is written, so reruns do not reuse older outputs.
CONVERTER_REVISION = 1


def fingerprint(**parts) -> str:
    """Identity of a conversion: what the source is and every setting that changes outputs."""
    blob = json.dumps({"revision": CONVERTER_REVISION, **parts}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class DiskFull(OSError):
    """ENOSPC whose message names the file and the free space."""


def disk_full(path: Path) -> DiskFull:
    """ENOSPC naming the file being written and the space left where it goes."""
    folder = next((p for p in (Path(path), *Path(path).parents) if p.exists()), Path("."))
    free = shutil.disk_usage(folder).free
    return DiskFull(errno.ENOSPC, f"{path}: no space left on device ({free / 2**20:.1f} MiB free "
                   f"in {folder}); free some space (or choose another --out) and rerun the same "
                   "command: finished outputs are kept")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class HashingWriter:
    """A write-only binary file that hashes what goes through it (tarfile writes sequentially)."""

    def __init__(self, path: Path):
        self._f = open(path, "wb")
        self._h = hashlib.sha256()
        self._n = 0

    def write(self, data) -> int:
        try:
            self._f.write(data)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise disk_full(Path(self._f.name)) from err
            raise
        self._h.update(data)
        self._n += len(data)
        return len(data)

    def tell(self) -> int:
        return self._n

    def hexdigest(self) -> str:
        return self._h.hexdigest()

    def close(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()


def _listed(root: Path) -> dict[str, str]:
    """{file: sha256} of the manifest already in `root` (nothing if none or unreadable)."""
    try:
        files = json.loads((root / MANIFEST).read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return files if isinstance(files, dict) else {}


# Lock descriptors of this process: forked workers close their copies (children.py), so the
# kernel drops a lock as soon as its converter dies, even by kill -9.
LOCK_FDS: set[int] = set()


class OutputDir:
    """DIR/<dataset>: one converter at a time (flock; the lock file names its holder's pid),
    stale temporaries removed on entry."""

    def __init__(self, root: Path, fingerprint: str):
        self.root = root
        self.fingerprint = fingerprint
        root.mkdir(parents=True, exist_ok=True)
        (root / PROGRESS).mkdir(exist_ok=True)
        try:
            self._lock = PidLock(root / PROGRESS / "lock")
        except LockHeld as held:
            raise RuntimeError(f"{root} is being converted by another process (pid "
                               f"{held.holder}); wait for it to finish or stop it") from None
        LOCK_FDS.add(self._lock.fileno())
        for stale in root.rglob(f"*{TMP_MARK}*"):
            stale.unlink()
        self._manifest_files = _listed(root)
        self._sleep = float(os.environ.get(SLEEP_ENV, "0") or 0)

    def close(self) -> None:
        """Release the lock; temporaries of this run (an interrupted one) are removed."""
        for tmp in self.root.rglob(f"*{TMP_MARK}{os.getpid()}*"):
            tmp.unlink(missing_ok=True)
        LOCK_FDS.discard(self._lock.fileno())
        self._lock.release()

    def _outdate(self, rel: str, sha256: str | None = None) -> None:
        """About to change or delete `rel`: the previous manifest no longer describes the folder
        once that happens, so it goes first."""
        if rel in self._manifest_files and self._manifest_files[rel] != sha256:
            (self.root / MANIFEST).unlink(missing_ok=True)
            self._manifest_files = {}

    def path(self, rel: str) -> Path:
        return self.root / rel

    def tmp_path(self, rel: str) -> Path:
        final = self.path(rel)
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.with_name(f"{final.name}{TMP_MARK}{os.getpid()}")

    def _record(self, key: str) -> Path:
        return self.root / PROGRESS / (key.replace("/", "__") + ".json")

    def note(self, key: str) -> dict | None:
        """A progress record written by this fingerprint, else None."""
        try:
            data = json.loads(self._record(key).read_text())
        except (OSError, ValueError):
            return None
        return data if data.get("fingerprint") == self.fingerprint else None

    def save_note(self, key: str, data: dict) -> None:
        write_json_atomic(self._record(key), {"fingerprint": self.fingerprint, **data})

    def done(self, rel: str) -> dict | None:
        """The record of a finished output whose file still has its size and sha256."""
        record = self.note(rel)
        final = self.path(rel)
        if record is None or not final.is_file() or final.stat().st_size != record["size"]:
            return None
        return record if sha256_file(final) == record["sha256"] else None

    def reuse_or_write(self, rel: str, write) -> tuple[str, float | None]:
        """sha256 of `rel`: a finished file's, reused; else `write()`'s, and its seconds."""
        done = self.done(rel)
        if done:
            return done["sha256"], None
        t0 = time.perf_counter()
        sha256 = write()
        return sha256, time.perf_counter() - t0

    def commit(self, rel: str, tmp: Path, sha256: str | None = None, **info) -> str:
        """fsync and rename tmp to its final name, then record it as done."""
        if sha256 is None:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            sha256 = sha256_file(tmp)
        size = tmp.stat().st_size
        final = self.path(rel)
        self._outdate(rel, sha256)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        self.save_note(rel, {"sha256": sha256, "size": size, **info})
        if self._sleep:
            time.sleep(self._sleep)
        return sha256

    def remove_stale(self, keep: set[str], under: tuple[str, ...]) -> None:
        """Delete final-named files under `under` that this run did not produce; a whole format
        left out of --formats is deleted too, with a warning (a rerun writes exactly the formats
        asked for)."""
        kept_formats = {fmt.format_of(rel) for rel in keep}
        for folder in under:
            removed = []
            for path in sorted(self.path(folder).rglob("*")) if self.path(folder).is_dir() else ():
                rel = path.relative_to(self.root).as_posix()
                if path.is_file() and rel not in keep:
                    self._outdate(rel)
                    path.unlink()
                    self._record(rel).unlink(missing_ok=True)
                    removed.append(rel)
            if removed and folder not in kept_formats:
                warnings.warn(f"deleted the {folder!r} records in {self.root} ({len(removed)} "
                              f"files): {folder!r} is not in --formats, and a rerun keeps only "
                              f"the formats asked for (add {folder} to --formats to keep them)",
                              stacklevel=2)

    def write_manifest(self, manifest: dict) -> None:
        fmt.write_manifest(self.root, manifest)
