"""`train/run.py` as `python train/run.py` runs it (its `__main__`), with one fault injected on
one rank: the test-only stand-in for what goes wrong on a node. Run by torchrun in
tests/test_rank_failure.py and tests/test_multinode.py; not a test module itself.

RESPIPE_FAULT picks the fault, RESPIPE_FAULT_RANK the rank it hits (default 1),
RESPIPE_FAULT_AT when (default 2), and RESPIPE_FAULT_LOG gets a line `fault rank wall-time`
when it fires, for the test to time the teardown:

- record: the AT-th train batch is a bad record: the loader raises a RecordsError (its text:
  RESPIPE_FAULT_TEXT), having started a loader thread that never ends.
- nan: the AT-th train batch's pixels are NaN.
- disk: the AT-th write of last.pt meets a full disk (half written, then ENOSPC).
- stop: the rank asks to stop (as Ctrl-C does) once AT iterations are done.

RESPIPE_SLOW_TEARDOWN=S: every other rank's teardown (the checkpoint writer's close) takes S
seconds longer, as on a loaded host, so that torchrun's SIGTERM lands during it.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import runpy
import sys
import threading
import time
from pathlib import Path

import pipelines
import train.checkpoint
import train.files
import train.loop
from fixtures import FullDisk
from records.format import RecordsError

ROOT = Path(__file__).resolve().parents[1]
FAULT = os.environ.get("RESPIPE_FAULT", "")
FAULTY = int(os.environ.get("RESPIPE_FAULT_RANK", "1"))
AT = int(os.environ.get("RESPIPE_FAULT_AT", "2"))
HERE = int(os.environ["RANK"]) == FAULTY


def fired() -> None:
    log = os.environ.get("RESPIPE_FAULT_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{FAULT} {os.environ['RANK']} {time.time()}\n")


class FaultyLoader:
    """The train loader, its AT-th batch a bad record (raised) or NaN pixels."""

    def __init__(self, loader):
        self.loader, self.batches = loader, 0

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, epoch, start=0):
        self.loader.set_epoch(epoch, start)

    def __iter__(self):
        for images, labels in self.loader:
            self.batches += 1
            if self.batches == AT:
                fired()
                if FAULT == "record":
                    threading.Thread(target=threading.Event().wait, name="stuck").start()
                    raise RecordsError(os.environ.get("RESPIPE_FAULT_TEXT", "a bad record"))
                images = images * float("nan")
            yield images, labels


def build_loader(data, split, device, rank=0, world_size=1, **kwargs):
    loader = real_build_loader(data, split, device, rank, world_size, **kwargs)
    return FaultyLoader(loader) if split == "train" else loader




saves = []


def open_fills_disk(file, *args, **kwargs):
    f = open(file, *args, **kwargs)
    if Path(file).name.startswith(".last.pt."):
        saves.append(file)
        return FullDisk(f, before=fired) if len(saves) == AT else f
    return f


real_train_one_epoch = train.loop.train_one_epoch


def train_one_epoch(*args, **kwargs):
    """Ask for a stop once AT iterations are done (under DDP the ranks vote at a log step)."""
    bound = inspect.signature(real_train_one_epoch).bind(*args, **kwargs)
    state, hooks = bound.arguments["state"], bound.arguments["hooks"]

    def asked() -> bool:
        if state.iteration >= AT:
            fired()
            return True
        return hooks.stop_requested()

    bound.arguments["hooks"] = dataclasses.replace(hooks, stop_requested=asked)
    return real_train_one_epoch(*bound.args, **bound.kwargs)


real_close = train.checkpoint.CheckpointWriter.close


def slow_close(self):
    time.sleep(float(os.environ["RESPIPE_SLOW_TEARDOWN"]))
    return real_close(self)


real_build_loader = pipelines.build_loader
if HERE and FAULT in ("record", "nan"):
    pipelines.build_loader = build_loader
elif HERE and FAULT == "disk":
    train.files.open = open_fills_disk
elif HERE and FAULT == "stop":
    train.loop.train_one_epoch = train_one_epoch
elif FAULT not in ("", "record", "nan", "disk", "stop"):
    sys.exit(f"RESPIPE_FAULT={FAULT!r}: expected record, nan, disk or stop")

if not HERE and os.environ.get("RESPIPE_SLOW_TEARDOWN"):
    train.checkpoint.CheckpointWriter.close = slow_close

sys.argv = [str(ROOT / "train" / "run.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
