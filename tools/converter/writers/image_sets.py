"""Image sets (ImageNet, folder datasets) -> "webdataset" shards + "ffcv" .beton (JPEG),
resumable shard by shard.

Pass 1 (all formats): a process pool decodes every image (RGB, shorter side capped; a JPEG that
is stored as it is, at 1/8 scale, which still reads every block), which finds the undecodable
ones before any FFCV writer starts; with "webdataset" it also writes the shards.
Each chunk of `shard_size` source images maps to one shard and one progress note (kept count,
per-class counts, skipped, pixel sums), so a rerun skips finished chunks. Pass 2 ("ffcv")
re-decodes the kept originals with the same function and lets FFCV JPEG-encode them once; when
the shards are written too, it stores the shards' JPEG bytes instead (decoded once in all: FFCV,
DALI and native then read the very same bytes).
"""
from __future__ import annotations

import io
import math
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import Pool

import numpy as np
from PIL import Image
from tqdm import tqdm

from records import format as fmt

from ..sources.imagenet import Item, read_item
from ..sources.images import BadImage, encode_jpeg, passthrough_nbytes, prepare
from .atomic import OutputDir
from .children import die_with_parent
from .ffcv import import_ffcv, page_size_for, write_beton
from .webdataset import ShardWriter

MAX_SHARD = 1000  # ~110 MB of ImageNet JPEGs: long sequential reads
MIN_SHARDS = 8  # so that small sets still split across readers/ranks
AHEAD = 256  # images decoded ahead of the shard writer, at most (~30 MB of ImageNet JPEGs)


class SkippedImageWarning(UserWarning):
    pass


def auto_shard_size(n: int) -> int:
    return min(MAX_SHARD, max(1, math.ceil(n / MIN_SHARDS)))


@dataclass(frozen=True)
class ImageSettings:
    """How every image of a set is stored."""

    quality: int  # JPEG quality of re-encoded images (FFCV re-encodes all of them)
    max_side: dict[str, int]  # cap on the shorter side, per split
    shard_size: int | None = None  # images per shard (None: auto_shard_size)
    upright: bool = False  # apply the EXIF orientation (photos as they are shown)
    stats: bool = False  # sum the train pixels for the per-channel mean and std

    def manifest(self) -> dict:
        upright = {"exif_upright": True} if self.upright else {}  # ImageNet's keys unchanged
        return {"jpeg_quality": self.quality, "max_shorter_side": self.max_side,
                "shard_size": self.shard_size, **upright}


def pixel_sums(pixels: np.ndarray) -> list[float]:
    """[sum R, G, B, sum of squares R, G, B, pixels] of a uint8 HxWx3 image, on the 0-1 scale."""
    flat = pixels.reshape(-1, 3).astype(np.float64) / 255.0
    return [*flat.sum(0).tolist(), *np.square(flat).sum(0).tolist(), float(len(flat))]


def mean_std(sums) -> dict[str, list[float]]:
    """Per-channel mean and std from added-up pixel_sums."""
    sums = np.asarray(sums, dtype=np.float64)
    mean = sums[:3] / sums[6]
    std = np.sqrt(np.maximum(sums[3:6] / sums[6] - mean ** 2, 0.0))
    return {"mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in std]}


def _scan(task: tuple[Item, int, ImageSettings, bool, bool]):
    """Pool worker: ("ok", jpeg bytes or None, raw RGB bytes, pixel sums or None) or
    ("bad", reason, 0, None)."""
    item, max_side, settings, want_jpeg, want_sums = task
    data = read_item(item)  # an I/O error is fatal, not a skip
    try:
        raw = None if want_sums else passthrough_nbytes(data, max_side)
        if raw is not None:  # stored as it is: checked, never decoded at full size
            return "ok", data if want_jpeg else None, raw, None
        prepared = prepare(data, max_side, upright=settings.upright)
        pixels = prepared.array()
    except BadImage as err:
        return "bad", str(err), 0, None
    sums = pixel_sums(pixels) if want_sums else None
    if not want_jpeg:
        return "ok", None, pixels.nbytes, sums
    jpeg = data if prepared.passthrough else encode_jpeg(prepared.image, settings.quality)
    return "ok", jpeg, pixels.nbytes, sums


class _Kept:
    """dataset[i] -> (RGB uint8 array, label), run by FFCV's writer workers."""

    def __init__(self, items: list[Item], max_side: int, upright: bool):
        self.items, self.max_side, self.upright = items, max_side, upright

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        item = self.items[i]
        return prepare(read_item(item), self.max_side, upright=self.upright).array(), item.label


class _FromShards:
    """dataset[i] -> ((JPEG bytes, height, width), label) read back from the split's shards
    (their index gives each key's offset; the JPEG header gives the size: no decoding)."""

    def __init__(self, out: OutputDir, files: dict[str, str], kept: list[Item]):
        where = {}
        for rel in files:
            if rel.endswith(".idx"):
                tar = str(out.path(rel[:-len(".idx")] + ".tar"))
                for key, parts in fmt.read_shard_index(out.path(rel)).items():
                    where[key] = (tar, *parts["jpg"])
        self.entries = [(*where[item.key], item.label) for item in kept]

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, i):
        path, offset, size, label = self.entries[i]
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise OSError(f"{path}: short read at {offset} (shard changed or truncated?)")
        width, height = Image.open(io.BytesIO(data)).size
        return (data, height, width), label


class _Bounded:
    """The pool's tasks, handed out at most `ahead` before the main process takes their results:
    Pool.imap keeps every finished result, so a main process slower than its workers (it
    writes and hashes the shards) would otherwise hold the whole split's images in memory."""

    def __init__(self, tasks: list, ahead: int):
        self.tasks, self.room, self.stop = tasks, threading.Semaphore(ahead), threading.Event()

    def __iter__(self):  # run by the pool's task thread
        for task in self.tasks:
            self.room.acquire()
            if self.stop.is_set():
                return
            yield task

    def taken(self, results):
        for result in results:
            self.room.release()
            yield result

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop.set()  # before the pool's exit joins the task thread: never left waiting
        self.room.release()


@dataclass
class SplitResult:
    kept: list[Item] = field(default_factory=list)
    dropped: list[Item] = field(default_factory=list)
    per_class: np.ndarray | None = None
    skipped: list[dict] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    written: int = 0  # images processed by this run (not reused)
    max_raw: int = 0  # largest decoded image in bytes: sizes FFCV's pages
    shard_size: int = 0
    pixel_sums: list[float] | None = None  # settings.stats: added-up pixel_sums of the kept


@dataclass
class Job:
    out: OutputDir
    formats: tuple[str, ...]
    workers: int
    strict: bool
    settings: ImageSettings
    n_classes: int

    def split(self, split: str, items: list[Item]):
        size = self.settings.shard_size or auto_shard_size(len(items))
        sums = self.settings.stats and split == "train"
        chunks = [range(s, min(s + size, len(items))) for s in range(0, len(items), size)]
        shards = "webdataset" in self.formats
        notes, todo = {}, []
        for k, chunk in enumerate(chunks):
            note = self.out.note(f"scan/{split}/{k:06d}")
            if self._reusable(note, shards) and (not sums or note.get("pixel_sums")):
                notes[k] = note
            else:
                todo.append((k, chunk))
        result = SplitResult(per_class=np.zeros(self.n_classes, dtype=np.int64), shard_size=size)
        max_side = self.settings.max_side[split]
        tasks = [(items[i], max_side, self.settings, shards, sums)
                 for _, chunk in todo for i in chunk]
        if tasks:
            with Pool(self.workers, die_with_parent, (os.getpid(),)) as pool, \
                    _Bounded(tasks, AHEAD) as feed:
                results = feed.taken(pool.imap(_scan, feed, chunksize=4))
                bar = tqdm(total=len(tasks), desc=f"{split} decode", unit="img", disable=None)
                for k, chunk in todo:
                    notes[k] = self._chunk(split, k, chunk, items, results, shards)
                    result.written += notes[k]["count"]
                    bar.update(len(chunk))
                bar.close()
        for k, chunk in enumerate(chunks):
            note = notes[k]
            dropped = {s["index"] for s in note["skipped"]}
            result.kept += [items[i] for i in chunk if i not in dropped]
            result.dropped += [items[i] for i in sorted(dropped)]
            result.skipped += [{"file": s["file"], "reason": s["reason"]} for s in note["skipped"]]
            result.per_class += np.asarray(note["per_class"], dtype=np.int64)
            result.max_raw = max(result.max_raw, note["max_raw"])
            if sums:
                result.pixel_sums = np.add(result.pixel_sums or 0.0, note["pixel_sums"]).tolist()
            if shards:
                result.files.update(note["files"])
        if self.strict and result.skipped:
            first = result.skipped[0]
            raise ValueError(f"{first['file']}: {first['reason']} (--strict)")
        for entry in result.skipped:
            warnings.warn(f"skipped {entry['file']}: {entry['reason']}", SkippedImageWarning,
                          stacklevel=2)
        return result

    def _reusable(self, note: dict | None, shards: bool) -> bool:
        if note is None or not shards:
            return note is not None
        # A webdataset run needs the chunk's shard: missing if an ffcv-only run did the scan.
        has_shard = bool(note["files"]) or note["count"] == 0
        return has_shard and all(self.out.done(rel) for rel in note["files"])

    def _chunk(self, split: str, k: int, chunk: range, items: list[Item], results, shards: bool):
        shard = ShardWriter(self.out, fmt.shard_rel(split, k)) if shards else None
        skipped, per_class, max_raw, sums = [], [0] * self.n_classes, 0, [0.0] * 7
        for i in chunk:
            status, payload, raw, pixels = next(results)
            item = items[i]
            if status == "bad":
                if self.strict:
                    raise ValueError(f"{item.name}: undecodable image ({payload}) (--strict)")
                skipped.append({"file": item.name, "reason": payload, "index": i})
                continue
            per_class[item.label] += 1
            max_raw = max(max_raw, raw)
            if pixels is not None:
                sums = np.add(sums, pixels).tolist()
            if shard is not None:
                shard.add(item.key, payload, item.label)
        files = {}
        if shard is not None:
            files = shard.commit() if len(shard) else shard.discard() or {}
        note = {"count": sum(per_class), "per_class": per_class, "skipped": skipped,
                "files": files, "max_raw": max_raw, "pixel_sums": sums}
        self.out.save_note(f"scan/{split}/{k:06d}", note)
        return note


def _check_classes_kept(result: SplitResult, classes: list[str], src) -> None:
    """Every class must keep a train image (a class with none could never be learnt)."""
    empty = [label for label, n in enumerate(result.per_class) if n == 0]
    if empty:
        files = [item.name for item in result.dropped if item.label == empty[0]]
        more = f" (and {len(empty) - 1} more classes)" if len(empty) > 1 else ""
        raise ValueError(f"{src}: train class {classes[empty[0]]}{more} has no decodable image: "
                         f"all {len(files)} were skipped ({', '.join(files[:5])}"
                         f"{', ...' if len(files) > 5 else ''}); a class must keep at least one "
                         "image: replace those files, or remove the class (ImageNet: "
                         "and pass --allow-subset)")




@dataclass
class ImageRecords:
    """What write_image_splits wrote: the manifest's files, splits, skipped and stats."""

    files: dict[str, str]
    splits: dict[str, dict]
    skipped: list[dict]
    report: dict[str, dict]
    stats: dict | None  # per-channel mean/std of the kept train images (settings.stats)


def write_image_splits(out: OutputDir, splits: dict[str, list[Item]], classes: list[str], *,
                       formats, workers: int, strict: bool, settings: ImageSettings,
                       src) -> ImageRecords:
    """Write every split's kept images in `formats` (webdataset, ffcv), checking that every
    train class keeps an image, and delete the outputs this run did not produce."""
    if "ffcv" in formats:
        import_ffcv()  # fail early, and keep its slow import out of the timings
    job = Job(out, tuple(formats), workers, strict, settings, len(classes))
    report = {f: {"images": 0, "seconds": 0.0} for f in ("webdataset", "ffcv", "decode")}
    stage = "webdataset" if "webdataset" in formats else "decode"
    results = {}
    for split, items in splits.items():
        t0 = time.perf_counter()
        results[split] = job.split(split, items)
        if split == "train":
            _check_classes_kept(results[split], classes, src)
        report[stage]["seconds"] += time.perf_counter() - t0
        report[stage]["images"] += results[split].written
    files = {rel: sha for r in results.values() for rel, sha in r.files.items()}
    for split, r in results.items():
        rel = fmt.beton_rel(split)
        if "ffcv" not in formats:
            continue
        shards = "webdataset" in formats
        kept = (_FromShards(out, r.files, r.kept) if shards
                else _Kept(r.kept, settings.max_side[split], settings.upright))
        files[rel], seconds = out.reuse_or_write(rel, partial(
            write_beton, out, rel, kept, workers=workers, jpeg_quality=settings.quality,
            page_size=page_size_for(r.max_raw), encoded=shards))
        if seconds is not None:
            report["ffcv"]["seconds"] += seconds
            report["ffcv"]["images"] += len(r.kept)
    out.remove_stale(set(files), under=("webdataset", "ffcv"))
    splits_info = {split: {"count": len(r.kept), "per_class": r.per_class.tolist(),
                           "shard_size": r.shard_size,
                           "shards": sum(rel.endswith(".tar") for rel in r.files)}
                   for split, r in results.items()}
    train = results.get("train")
    stats = mean_std(train.pixel_sums) if settings.stats and train and train.kept else None
    return ImageRecords(files, splits_info, [s for r in results.values() for s in r.skipped],
                        report, stats)
