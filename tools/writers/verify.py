"""`verify`: re-check a converted dataset folder against its manifest (records.format)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from records import format as fmt

from .atomic import sha256_file
from .ffcv import beton_count
from .webdataset import index_count


def verify(root: Path) -> list[str]:
    """Problems found (empty = fine): every file's sha256, then the counts per split."""
    root = Path(root)
    manifest = fmt.read_manifest(root)
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
        if fmt.beton_rel(split) in files:
            counts[fmt.beton_rel(split)] = beton_count(root / fmt.beton_rel(split))
        images_rel, labels_rel = fmt.array_rels(split)
        if labels_rel in files:
            labels = np.load(root / labels_rel)
            counts[images_rel] = len(np.load(root / images_rel, mmap_mode="r"))
            counts[labels_rel] = len(labels)
            per_class = np.bincount(labels, minlength=len(manifest["classes"])).tolist()
            if per_class != info["per_class"]:
                problems.append(f"{root / labels_rel}: per-class counts differ from the manifest")
        folder = fmt.shard_folder_rel(split) + "/"
        indexes = [rel for rel in files if rel.startswith(folder) and rel.endswith(".idx")]
        if indexes:
            counts[f"{folder}*.idx"] = sum(index_count(root / rel) for rel in indexes)
        for rel, n in counts.items():
            if n != info["count"]:
                problems.append(f"{root / rel}: {n} samples, manifest says {split} has "
                                f"{info['count']}")
    return problems
