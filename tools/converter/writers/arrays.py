"""The "arrays" record writer: CIFAR images and labels as .npy files."""
from __future__ import annotations

import errno

import numpy as np

from .atomic import OutputDir, disk_full


def write_npy(out: OutputDir, rel: str, array: np.ndarray) -> str:
    tmp = out.tmp_path(rel)
    try:
        with open(tmp, "wb") as f:  # a file object: np.save(path) would append ".npy" to tmp
            np.save(f, array)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:
            raise disk_full(out.path(rel)) from err
        raise
    return out.commit(rel, tmp, shape=list(array.shape), dtype=str(array.dtype))
