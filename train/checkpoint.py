"""Checkpoints that load with `torch.load(weights_only=True)`, written atomically.

A checkpoint holds only tensors and plain containers: the unwrapped model's state_dict, the
optimizer/scheduler/scaler states, the config as a dict, the loader position and the RNG states
(as tensors), so resuming restores the run exactly.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn


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


def save_atomic(obj: dict, path: str | Path) -> None:
    """torch.save to a temporary file, then os.replace: a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint here")
    return torch.load(path, map_location=map_location, weights_only=True)


def load_model_state(model: nn.Module, state: dict) -> None:
    """Load a (possibly DDP/compile-prefixed) state_dict into the unwrapped `model`."""
    unwrap(model).load_state_dict(clean_state_dict(state))


def all_finite(model: nn.Module) -> bool:
    """Whether every parameter and buffer is finite (one host sync)."""
    tensors = [t for t in unwrap(model).state_dict().values() if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())
