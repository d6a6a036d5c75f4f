"""One writer at a time: converters lock a dataset folder, training runs their run directory."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path


class LockHeld(Exception):
    """Another process holds the lock; `holder` is the pid it wrote (or "unknown")."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


class PidLock:
    """An exclusive flock on `path` holding the owner's pid. The kernel releases it when the
    process ends, however it ends, so a lock left by a killed process never blocks."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            raise LockHeld(holder) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()

    def fileno(self) -> int:
        return self.file.fileno()

    def release(self) -> None:
        if not self.file.closed:
            self.file.close()  # closing drops the flock
