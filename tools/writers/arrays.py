"""The "arrays" record writer: CIFAR images and labels as .npy files."""
from __future__ import annotations

import numpy as np

from .atomic import OutputDir


def write_npy(out: OutputDir, rel: str, array: np.ndarray) -> str:
    tmp = out.tmp_path(rel)
    with open(tmp, "wb") as f:  # a file object: np.save(path) would append ".npy" to tmp
        np.save(f, array)
    return out.commit(rel, tmp, shape=list(array.shape), dtype=str(array.dtype))
