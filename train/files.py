"""The run directory's files: one run at a time (a lock), whole files only (atomic writes under
unique temporary names), and the records of a run that never checkpointed, set aside."""
from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from records.lock import LockHeld, PidLock

LOCK = ".lock"
# what a run writes besides checkpoints; set aside when a new run starts in the directory
RECORDS = ("config.yaml", "metrics.jsonl", "events.out.tfevents.*", "best.pt", "curves.png",
           "summary.json", "eval_*.json")


class RunError(RuntimeError):
    """A run directory that cannot be used as asked; the message names the file and the way on."""


class RunLock(PidLock):
    """RUN_DIR/.lock: one run at a time in a run directory."""

    def __init__(self, run_dir: Path):
        path = Path(run_dir) / LOCK
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            super().__init__(path)
        except LockHeld as held:
            raise RunError(f"{path.parent} is in use by another run (pid {held.holder}); wait "
                           "for it to end, or pick another run.name") from None


def size_text(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def atomic_write(path: str | Path, data: bytes | memoryview | Callable,
                 previous: str | Path | None = None) -> None:
    """Write `data` (bytes, or a function that writes to a binary file) to a temporary file
    beside `path` under a name no other process uses, then os.replace: readers see the old file
    or the new one, never half of one. previous: once the new file is whole, the old one moves
    there (kept as a fallback). On failure the temporary is removed; a full disk is reported
    with the path and the free space."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.is_file():
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        full = no_space(error, path, None if callable(data) else len(data))
        if full is not None:
            raise full from error
        raise


def no_space(error: BaseException, path: Path, size: int | None = None) -> RunError | None:
    """The error to raise when writing `size` bytes (None: unknown) to `path` failed because the
    disk or the quota is full (ENOSPC, EDQUOT): it names the path, the free space and what to
    do. None for any other error."""
    if not isinstance(error, OSError) or error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    path = Path(path)
    need = "" if size is None else f" ({size_text(size)})"
    free = size_text(shutil.disk_usage(path.parent).free)
    return RunError(f"cannot write {path}{need}: no space left on the device, {free} free in "
                    f"{path.parent}; free some space there")


def set_aside(run_dir: Path) -> Path | None:
    """Move a run's records (no checkpoints) into RUN_DIR/aborted-<n>, the first free n, so a
    new run in RUN_DIR never mixes its records with them. None when there were none."""
    found = [p for pattern in RECORDS for p in sorted(Path(run_dir).glob(pattern))]
    if not found:
        return None
    n = 1
    while (run_dir / f"aborted-{n}").exists():
        n += 1
    aside = run_dir / f"aborted-{n}"
    aside.mkdir()
    for p in found:
        os.replace(p, aside / p.name)
    return aside
