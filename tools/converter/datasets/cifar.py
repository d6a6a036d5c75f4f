"""The cifar converter (cifar10, cifar100): the official python tarball (downloaded and
md5-checked when no --src is given) -> "arrays" (.npy) + "ffcv" (raw, lossless .beton), one
atomic output at a time."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from records import format as fmt
from records.datasets import Dataset

from ..sources.cifar import download, read_cifar
from ..writers.arrays import write_npy
from ..writers.atomic import OutputDir, fingerprint, sha256_file
from ..writers.ffcv import import_ffcv, write_beton

NEEDS_SRC = False  # downloads the official tarball


def add_arguments(parser, dataset: Dataset) -> None:
    """No options beyond the common ones."""


def convert(dataset: Dataset, src: Path | None, root: Path, *, formats, workers, strict,
            allow_subset):
    del strict  # every image of a tarball is read or the tarball is refused
    info = {}
    if src is None:
        src, info = download(dataset.name, root.parent / "downloads"), {"downloaded": True}
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such file (expected the {dataset.name} python "
                                "tarball)")
    return convert_cifar(dataset.name, src, root, formats=formats, workers=workers,
                         allow_subset=allow_subset, source_info={"path": str(src), **info})


class _Arrays:
    """dataset[i] -> (uint8 32x32x3, int) for FFCV's writer (inherited by its forked workers)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} "
                             f"{images.shape}")
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def _write(out: OutputDir, rel: str, images, labels, workers: int) -> str:
    if rel.endswith(".beton"):
        return write_beton(out, rel, _Arrays(images, labels), workers=workers)
    return write_npy(out, rel, images if rel.endswith("_images.npy") else labels)


def convert_cifar(dataset, tar_path, root, *, formats, workers, allow_subset, source_info):
    tar_sha = sha256_file(tar_path)
    data = read_cifar(dataset, tar_path, allow_subset)  # fully validated before any output
    settings = {"ffcv_write_mode": "raw", "allow_subset": allow_subset}
    if "ffcv" in formats:
        import_ffcv()  # fail early, and keep its slow import out of the timings
    out = OutputDir(root, fingerprint(dataset=dataset, source=tar_sha, settings=settings))
    try:
        files = {}
        report = {f: {"images": 0, "seconds": 0.0} for f in formats}
        splits = {}
        for split in ("train", "test"):
            images, labels = data.images[split], data.labels[split]
            for rel in (*fmt.array_rels(split), fmt.beton_rel(split)):
                name = fmt.format_of(rel)
                if name not in formats:
                    continue
                files[rel], seconds = out.reuse_or_write(
                    rel, partial(_write, out, rel, images, labels, workers))
                if seconds is None:
                    continue
                report[name]["seconds"] += seconds
                report[name]["images"] += 0 if rel.endswith("_labels.npy") else len(labels)
            splits[split] = {"count": len(labels), "per_class": np.bincount(
                labels, minlength=len(data.classes)).tolist()}
        out.remove_stale(set(files), under=("arrays", "ffcv"))
        manifest = fmt.make_manifest(
            dataset=dataset, formats=formats, source={**source_info, "sha256": tar_sha},
            settings=settings, classes=data.classes, splits=splits, files=files, root=root,
            fingerprint=out.fingerprint)
        out.write_manifest(manifest)
        return manifest, report
    finally:
        out.close()
