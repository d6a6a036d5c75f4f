"""Checkpoints that load with `torch.load(weights_only=True)`, written atomically.

A checkpoint holds only tensors and plain containers: the unwrapped model's state_dict, the
optimizer/scheduler/scaler states, the config as a dict, the loader position and the RNG states
(as tensors), so resuming restores the run exactly.
"""
from __future__ import annotations

import io
import pickle
import random
import re
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from train.files import RunError, atomic_write

LAST, PREVIOUS, BEST = "last.pt", "last.prev.pt", "best.pt"


class CheckpointError(RunError):
    """A checkpoint file that cannot be read; the message names it and says why."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP (`.module`) and torch.compile (`._orig_mod`)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def clean_state_dict(state: dict) -> dict:
    """Strip the `module.` (DDP) and `_orig_mod.` (torch.compile) prefixes from a state_dict."""
    def clean(key: str) -> str:
        changed = True
        while changed:
            changed = False
            for prefix in ("module.", "_orig_mod."):
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        return key.replace("._orig_mod.", ".")
    return {clean(k): v for k, v in state.items()}


def rng_state() -> dict:
    """Every RNG the run touches, as tensors and primitives."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_atomic(obj: dict, path: str | Path, previous: str | Path | None = None) -> None:
    """torch.save, written atomically (files.atomic_write). previous: where the file at `path`
    moves once the new one is whole, so a damaged newest checkpoint still leaves one to use."""
    buffer = io.BytesIO()  # serialize first: a full disk then fails a plain write, with errno
    torch.save(obj, buffer)
    atomic_write(path, buffer.getbuffer(), previous=previous)


def to_host(obj):
    """A copy of a checkpoint payload that the steps after it cannot change: every tensor copied
    into host memory, every dict (of its own type, attributes kept), list and tuple rebuilt."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):  # a state_dict is an OrderedDict with _metadata (versions)
        copy = type(obj)((key, to_host(value)) for key, value in obj.items())
        if hasattr(obj, "__dict__"):
            copy.__dict__.update(obj.__dict__)
        return copy
    if type(obj) in (list, tuple):
        return type(obj)(to_host(value) for value in obj)
    return obj


class CheckpointWriter:
    """Checkpoints written behind training, one at a time: save() takes a host copy of the
    payload (to_host), and a background thread serializes and writes it (save_atomic, fsync
    included) while the next steps run. A write's error is raised by the next save() or by
    wait(); the files on disk are whole either way."""

    def __init__(self):
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self.pending: Future | None = None

    def save(self, payload: dict, files: list[tuple[Path, Path | None]]) -> None:
        """Write `payload` to each (path, previous) of `files`, in order, after the write
        before it (whose error this raises)."""
        self.wait()
        self.pending = self.pool.submit(self._write, to_host(payload), files)

    @staticmethod
    def _write(payload: dict, files: list[tuple[Path, Path | None]]) -> None:
        for path, previous in files:
            save_atomic(payload, path, previous)

    def wait(self) -> None:
        """Until the last save is on disk; raises its error."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Finish the last write without raising (the run is ending for another reason)."""
        self.pending = None
        self.pool.shutdown(wait=True)


def _unreadable(path: Path, error: Exception) -> str:
    """Why torch could not load `path`, without torch's advice to load it unsafely."""
    if path.stat().st_size == 0:
        return "it is empty (0 bytes)"
    text = str(error)
    code = re.search(r"GLOBAL ([\w.]+)", text)
    if isinstance(error, pickle.UnpicklingError) and code:
        return (f"it asks to run code when loaded ({code[1]}); refused, nothing was run: a "
                "respipe checkpoint holds only tensors and plain values")
    # torch's own text, less its advice on loading the file unsafely
    detail = " ".join(line.strip() for line in text.splitlines() if line.strip()
                      and "weights_only" not in line and not line.startswith("Check the doc"))
    detail = detail.split(". ")[0] or "-"
    return f"it is truncated or not a checkpoint ({type(error).__name__}: {detail})"


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The checkpoint at `path`, loaded with weights_only=True (it can run no code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint here")
    try:
        with warnings.catch_warnings():  # torch's note on the pickle protocol of a bad file
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except Exception as error:  # a damaged file fails in many ways, none of them safe to retry
        raise CheckpointError(f"{path}: cannot load: {_unreadable(path, error)}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: cannot load: it holds a {type(obj).__name__}, not a "
                              "checkpoint (a dict)")
    return obj


def load_for_resume(run_dir: Path, warn: Callable[[str], None] = print) -> dict:
    """RUN_DIR/last.pt; if it is missing or unreadable, last.prev.pt (the one before it) with
    a warning; if neither loads, an error that names both and the way on."""
    last, previous = run_dir / LAST, run_dir / PREVIOUS
    try:
        return load_checkpoint(last)
    except (CheckpointError, FileNotFoundError) as error:
        problem = str(error)
    try:
        resumed = load_checkpoint(previous)
    except (CheckpointError, FileNotFoundError) as error:
        best = run_dir / BEST
        if best.is_file():
            way = f"continue from the best model's checkpoint instead: --resume {best}"
        elif last.is_file() or previous.is_file():
            way = "start a new run (another run.name)"
        else:  # a run that died before its first checkpoint
            way = f"start it again without --resume (its records move into {run_dir}/aborted-<n>)"
        raise CheckpointError(f"cannot resume {run_dir}: {problem}; {error}; {way}") from None
    warn(f"warning: {problem}; resuming from {previous} (iteration "
         f"{resumed['state']['iteration']}) instead")
    return resumed


def load_model_state(model: nn.Module, state: dict) -> None:
    """Load a (possibly DDP/compile-prefixed) state_dict into the unwrapped `model`."""
    unwrap(model).load_state_dict(clean_state_dict(state))


def all_finite(model: nn.Module) -> bool:
    """Whether every parameter and buffer is finite (one host sync)."""
    tensors = [t for t in unwrap(model).state_dict().values() if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())
