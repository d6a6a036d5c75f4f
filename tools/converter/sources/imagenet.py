"""ImageNet-2012 sources: the extracted folder layout or the official archives.

`load_source` lists every image as an `Item` (where its bytes are: a file, or an offset and size
inside an uncompressed archive), its label, and a webdataset key. Archives are read member by
member through their tar headers and images later by offset: nothing is unpacked to disk.

Class rule: classes are the train class folders (or per-class tars), sorted by WNID; class index
= position in that list. Every class must hold at least one image. A devkit, when present (the
archives need one), must list every train WNID among its leaf synsets. Unless `allow_subset`,
there must be exactly 1000 classes (all of the devkit's leaves when it is present). Every val
label must be one of the train classes.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from .safe_tar import members

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
FULL_CLASSES = 1000
IMAGE_EXTS = {".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")
VAL_STEM = re.compile(r"ILSVRC2012_val_(\d{8})")


class Item(NamedTuple):
    name: str  # where it came from, for messages and `skipped`
    key: str  # webdataset key, unique in its split
    label: int
    path: str  # a file, or the archive holding the image
    offset: int
    size: int  # -1: the whole file


def read_item(item: Item) -> bytes:
    with open(item.path, "rb") as f:
        if item.size < 0:
            return f.read()
        f.seek(item.offset)
        data = f.read(item.size)
    if len(data) != item.size:
        raise OSError(f"{item.name}: short read from {item.path} (archive changed or truncated?)")
    return data


@dataclass
class Devkit:
    leaves: dict[int, str]  # ILSVRC2012_ID -> WNID, leaf synsets (the classes)
    words: dict[str, str]  # WNID -> human-readable name
    val_ids: list[int]  # ground-truth ILSVRC2012_ID of val image 1, 2, ...


@dataclass
class ImageNetSource:
    layout: str  # "folders" | "archives"
    classes: list[str]
    class_names: list[str] | None
    splits: dict[str, list[Item]]
    skipped: list[dict] = field(default_factory=list)
    identity: dict = field(default_factory=dict)


def read_devkit(path: Path) -> Devkit:
    import numpy as np
    import scipy.io

    found = {}
    with tarfile.open(path, "r|*") as tar:
        for member in members(tar, str(path)):
            for want in ("data/meta.mat", "data/ILSVRC2012_validation_ground_truth.txt"):
                if member.isfile() and member.name.endswith(want):
                    found[want] = tar.extractfile(member).read()
    for want in ("data/meta.mat", "data/ILSVRC2012_validation_ground_truth.txt"):
        if want not in found:
            raise ValueError(f"{path}: no member ending in {want} (not the ILSVRC2012 devkit?)")
    synsets = scipy.io.loadmat(io.BytesIO(found["data/meta.mat"]), squeeze_me=True).get("synsets")
    names = getattr(getattr(synsets, "dtype", None), "names", None) or ()
    if "ILSVRC2012_ID" not in names or "WNID" not in names:
        raise ValueError(f"{path}: data/meta.mat needs a 'synsets' struct with ILSVRC2012_ID "
                         "and WNID fields")
    synsets = np.atleast_1d(synsets)
    children = synsets["num_children"] if "num_children" in names else [0] * len(synsets)
    words = synsets["words"] if "words" in names else synsets["WNID"]
    leaves = {int(i): str(w) for i, w, n in zip(synsets["ILSVRC2012_ID"], synsets["WNID"], children)
              if int(n) == 0}
    gt_lines = found["data/ILSVRC2012_validation_ground_truth.txt"].decode().split()
    try:
        val_ids = [int(x) for x in gt_lines]
    except ValueError:
        raise ValueError(f"{path}: ground truth must hold one integer per line") from None
    unknown = sorted(set(val_ids) - set(leaves))
    if unknown:
        raise ValueError(f"{path}: ground truth uses ILSVRC2012_ID {unknown[:5]} that are not "
                         "leaf synsets of data/meta.mat")
    return Devkit(leaves, {str(w): str(t) for w, t in zip(synsets["WNID"], words)}, val_ids)


def _link_problem(path: str) -> str | None:
    """Why a symbolic link cannot be followed (None: it can)."""
    try:
        os.stat(path)
    except OSError as err:
        return "symbolic link loop" if err.errno == errno.ELOOP else \
            f"broken symbolic link ({err.strerror})"
    return None


def _contains_itself(path: str) -> bool:
    """A folder link pointing at one of its own ancestors (listing it would never end)."""
    target, parent = os.path.realpath(path), os.path.realpath(os.path.dirname(path))
    return parent == target or parent.startswith(target.rstrip(os.sep) + os.sep)


class Lister:
    """Collects (name, stem, path, offset, size) per class, skipped entries and an identity;
    files with an extension outside `exts` are listed skips."""

    def __init__(self, src: Path, exts=IMAGE_EXTS):
        self.src, self.exts = src, frozenset(exts)
        self.skipped: list[dict] = []
        self._digest = hashlib.sha256()

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append({"file": name, "reason": reason})

    def seen(self, name: str, size: int) -> None:
        self._digest.update(f"{name}\t{size}\n".encode())

    def digest(self) -> str:
        return self._digest.hexdigest()

    def image_ext(self, name: str) -> bool:
        return PurePosixPath(name).suffix.lower() in self.exts

    def entries(self, folder: Path):
        """(entry, path relative to the source, why its link cannot be followed or None) of a
        folder, sorted by name; hidden entries are listed skips."""
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            rel = Path(entry.path).relative_to(self.src).as_posix()
            if entry.name.startswith("."):
                self.skip(rel, "hidden entry ignored")
            else:
                yield entry, rel, _link_problem(entry.path) if entry.is_symlink() else None

    def folder(self, folder: Path) -> list[tuple]:
        """Image files of one class folder, sorted by name."""
        out = []
        for entry, rel, link in self.entries(folder):
            if link:
                self.skip(rel, link)
            elif entry.is_dir():
                self.skip(rel, "nested folder ignored")
            elif not self.image_ext(entry.name):
                self.skip(rel, "not an image file extension")
            else:
                size = entry.stat().st_size
                self.seen(rel, size)
                out.append((rel, Path(entry.name).stem, entry.path, 0, -1))
        return out

    def class_folders(self, root: Path) -> dict[str, list[tuple]]:
        classes = {}
        for entry, rel, link in self.entries(root):
            if link:
                raise ValueError(f"{entry.path}: a class folder that is a {link}")
            elif not entry.is_dir():
                self.skip(rel, "not a class folder")
            elif entry.is_symlink() and _contains_itself(entry.path):
                raise ValueError(f"{entry.path}: a class folder that is a symbolic link loop "
                                 f"(it points to {os.path.realpath(entry.path)}, which holds it)")
            else:
                classes[entry.name] = self.folder(Path(entry.path))
                if not classes[entry.name]:
                    raise ValueError(f"{entry.path}: empty class folder (no "
                                     f"{'/'.join(sorted(e[1:] for e in self.exts))} files); "
                                     "add images or remove it")
        return classes

    def train_tar(self, path: Path) -> dict[str, list[tuple]]:
        classes = {}
        outer = _open_plain_tar(path)
        with outer:
            for member in members(outer, str(path)):
                if member.isdir():
                    continue
                if not member.isfile() or not member.name.endswith(".tar"):
                    raise ValueError(f"{path}: unexpected member {member.name!r}; expected one "
                                     "<wnid>.tar per class")
                wnid = PurePosixPath(member.name).stem
                where = f"{path.name}:{member.name}"
                if wnid in classes:
                    raise ValueError(f"{where}: class {wnid} appears twice")
                images = []
                with tarfile.open(fileobj=outer.extractfile(member), mode="r:") as inner:
                    for im in members(inner, where):
                        name = f"{where}/{im.name}"
                        if im.isdir():
                            continue
                        if not im.isfile() or im.issparse():
                            self.skip(name, "not a regular file")
                        elif not self.image_ext(im.name):
                            self.skip(name, "not an image file extension")
                        else:
                            self.seen(name, im.size)
                            images.append((name, PurePosixPath(im.name).stem, str(path),
                                           member.offset_data + im.offset_data, im.size))
                if not images:
                    raise ValueError(f"{where}: empty class {wnid} (no images)")
                classes[wnid] = sorted(images)
        return classes

    def val_tar(self, path: Path) -> list[tuple]:
        images = []
        with _open_plain_tar(path) as tar:
            for member in members(tar, str(path)):
                if member.isdir():
                    continue
                name = f"{path.name}:{member.name}"
                if not member.isfile() or not VAL_NAME.fullmatch(PurePosixPath(member.name).name):
                    raise ValueError(f"{name}: unexpected member; expected "
                                     "ILSVRC2012_val_<8 digits>.JPEG files")
                self.seen(name, member.size)
                images.append((name, PurePosixPath(member.name).stem, str(path),
                               member.offset_data, member.size))
        return sorted(images)


def _open_plain_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:")
    except tarfile.ReadError as err:
        raise ValueError(f"{path}: not an uncompressed tar as distributed ({err})") from None


def _val_labels_from_devkit(images: list[tuple], devkit: Devkit | None, where: Path):
    if devkit is None:
        raise ValueError(f"{where / DEVKIT} not found: val labels come from its "
                         "data/ILSVRC2012_validation_ground_truth.txt")
    out = []
    for entry in images:
        match = VAL_STEM.fullmatch(entry[1])
        if not match:
            raise ValueError(f"{entry[0]}: val file names must be ILSVRC2012_val_<8 digits>.JPEG "
                             "to be labelled from the devkit")
        number = int(match.group(1))
        if not 1 <= number <= len(devkit.val_ids):
            raise ValueError(f"{entry[0]}: no ground-truth line {number} in the devkit "
                             f"({len(devkit.val_ids)} lines)")
        out.append((devkit.leaves[devkit.val_ids[number - 1]], entry))
    return out


def _check_classes(classes: list[str], devkit: Devkit | None, allow_subset: bool, src: Path):
    if devkit is not None:
        unknown = [w for w in classes if w not in devkit.leaves.values()]
        if unknown:
            raise ValueError(f"{src}: train classes {unknown[:5]} are not leaf synsets of "
                             f"{DEVKIT} ({len(unknown)} in all)")
    if allow_subset:
        return
    if devkit is not None:
        missing = sorted(set(devkit.leaves.values()) - set(classes))
        if missing:
            raise ValueError(f"{src}: {len(missing)} devkit classes have no train images "
                             f"(e.g. {missing[:5]}); pass --allow-subset to convert a subset")
    if len(classes) != FULL_CLASSES:
        raise ValueError(f"{src}: found {len(classes)} train classes, ImageNet-1k has "
                         f"{FULL_CLASSES}; pass --allow-subset to convert a subset")


def _keys(entries: list[tuple[str, tuple]]) -> list[str]:
    """Unique webdataset keys from file stems (no dots: the reader splits the name there)."""
    def plain(name: str) -> str:
        return re.sub(r"[^A-Za-z0-9_-]", "_", name)

    stems = [plain(e[1]) for _, e in entries]
    if len(set(stems)) < len(stems):
        stems = [f"{plain(wnid)}_{s}" for (wnid, _), s in zip(entries, stems)]
    if len(set(stems)) < len(stems):
        stems = [f"{i:08d}_{s}" for i, s in enumerate(stems)]
    return stems


def make_items(entries: list[tuple[str, tuple]], index: dict[str, int]) -> list[Item]:
    """Items of (class, listed entry) pairs, labelled by `index`, with unique keys."""
    return [Item(e[0], key, index[wnid], e[2], e[3], e[4])
            for (wnid, e), key in zip(entries, _keys(entries))]


def load_source(src: Path, allow_subset: bool = False) -> ImageNetSource:
    src = Path(src)
    lister = Lister(src)
    devkit = read_devkit(src / DEVKIT) if (src / DEVKIT).is_file() else None
    if (src / "train").is_dir():
        layout = "folders"
        train = lister.class_folders(src / "train")
        val_root = src / "val"
        if not val_root.is_dir():
            raise ValueError(f"{val_root} not found (expected val/<wnid>/*.JPEG or a flat val/ "
                             "with the devkit)")
        with os.scandir(val_root) as entries:
            per_class = any(e.is_dir() for e in entries if not e.name.startswith("."))
        if per_class:
            val = [(w, e) for w, es in lister.class_folders(val_root).items() for e in es]
        else:
            val = _val_labels_from_devkit(lister.folder(val_root), devkit, src)
    elif (src / TRAIN_TAR).is_file():
        layout = "archives"
        if devkit is None:
            raise ValueError(f"{src / DEVKIT} not found: the archives need the devkit for "
                             "class ids and val labels")
        if not (src / VAL_TAR).is_file():
            raise ValueError(f"{src / VAL_TAR} not found")
        train = lister.train_tar(src / TRAIN_TAR)
        val = _val_labels_from_devkit(lister.val_tar(src / VAL_TAR), devkit, src)
    else:
        raise ValueError(f"{src}: expected train/ and val/ folders, or {TRAIN_TAR}, {VAL_TAR} "
                         f"and {DEVKIT}")
    if not train:
        raise ValueError(f"{src}: no train classes found")
    classes = sorted(train)
    _check_classes(classes, devkit, allow_subset, src)
    strangers = Counter(w for w, _ in val if w not in train)
    if strangers:
        first = next(e[0] for w, e in val if w in strangers)
        raise ValueError(f"{src}: val labels must be train classes; {sum(strangers.values())} "
                         f"val images are labelled {sorted(strangers)[:5]} (first: {first})")
    index = {w: i for i, w in enumerate(classes)}
    train_entries = [(w, e) for w in classes for e in train[w]]
    identity = {"layout": layout, "listing_sha256": lister.digest()}
    if devkit is not None:
        identity["devkit_size"] = (src / DEVKIT).stat().st_size
    return ImageNetSource(
        layout=layout,
        classes=classes,
        class_names=[devkit.words.get(w, w) for w in classes] if devkit else None,
        splits={"train": make_items(train_entries, index),
                "val": make_items(sorted(val, key=lambda v: (v[1][1], v[1][0])), index)},
        skipped=lister.skipped,
        identity=identity,
    )
