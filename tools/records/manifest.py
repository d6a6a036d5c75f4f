"""manifest.json: what a converted dataset folder holds, and `verify` that re-checks it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .atomic import MANIFEST, OutputDir, sha256_file
from .dali import index_count
from .ffcv import beton_count

VERSION = 1


def build(out: OutputDir, *, dataset: str, source, settings: dict, classes: list[str],
          splits: dict[str, dict], files: dict[str, str], skipped: list[dict], **extra) -> dict:
    manifest = {
        "dataset": dataset, "version": VERSION, "source": source, "settings": settings,
        "classes": classes, "splits": splits, "files": dict(sorted(files.items())),
        "skipped": skipped, "fingerprint": out.fingerprint, **extra,
    }
    out.write_manifest(manifest)
    return manifest


def load(root: Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {root} is not a finished conversion "
                                "(rerun tools/convert.py to complete it)")
    return json.loads(path.read_text())


def verify(root: Path) -> list[str]:
    """Problems found (empty = fine): every file's sha256, then the counts per split."""
    root = Path(root)
    manifest = load(root)
    problems = []
    for rel, sha in manifest["files"].items():
        path = root / rel
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif sha256_file(path) != sha:
            problems.append(f"{path}: sha256 differs from the manifest")
    if problems:
        return problems
    files = manifest["files"]
    for split, info in manifest["splits"].items():
        counts = {}
        if f"ffcv/{split}.beton" in files:
            counts[f"ffcv/{split}.beton"] = beton_count(root / f"ffcv/{split}.beton")
        labels_rel = f"dali/{split}_labels.npy"
        if labels_rel in files:
            labels = np.load(root / labels_rel)
            images = np.load(root / f"dali/{split}_images.npy", mmap_mode="r")
            counts[f"dali/{split}_images.npy"] = len(images)
            counts[labels_rel] = len(labels)
            per_class = np.bincount(labels, minlength=len(manifest["classes"])).tolist()
            if per_class != info["per_class"]:
                problems.append(f"{root / labels_rel}: per-class counts differ from the manifest")
        shards = [rel for rel in files if rel.startswith(f"dali/{split}/") and rel.endswith(".idx")]
        if shards:
            counts[f"dali/{split}/*.idx"] = sum(index_count(root / rel) for rel in shards)
        if sum(info["per_class"]) != info["count"]:
            problems.append(f"{root / MANIFEST}: {split} per_class does not sum to its count")
        for rel, n in counts.items():
            if n != info["count"]:
                problems.append(f"{root / rel}: {n} samples, manifest says {split} has "
                                f"{info['count']}")
    return problems
