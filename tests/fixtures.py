"""Test helpers shared by the test modules (pytest fixtures live in conftest.py).

- Pixels: back from normalized batches to stored pixels.
- Records written through records/format.py (the converters' own writers): tiny CIFAR arrays,
  tiny ImageNet shards; the training tests' run arguments.
- The pattern fixture: an ImageNet-format set whose pixels say where they came from.
- ImageNet and CIFAR *source* fixtures (official layouts) and readers of converted records.

## The pattern fixture
ImageNet-format fixture whose pixels say where they came from.

Pattern images: R = linear ramp in x (0 at the left edge, 255 at the right), G = ramp in y,
B = 128, so the scale, crop offset and flip of any crop can be read back from its ramps
(`recover_geometry`). Uniform images (one colour each) show PCA lighting as a pure per-image
shift. A few real photos (scikit-image's) give texture for decoder/resizer comparisons.
Every train image has its own class, so a sample is identified by its label.

## Source fixtures
Small ImageNet-format and CIFAR-format fixtures for tests (importable by any test module).

ImageNet fixtures are built from real photos (scikit-image's bundled samples, randomly cropped and
rescaled so the shorter side is 300-700 px, saved as JPEG quality 90) with generated WNID class
folders n00000001, n00000002, ... Both layouts hold the same images:

    make_imagenet_folder(root, classes=4, per_class=6, val_per_class=2, oddities=True) -> root
        root/train/<wnid>/<wnid>_<j>.JPEG, root/val/<wnid>/ILSVRC2012_val_<n>.JPEG
    make_imagenet_tars(root, ...) -> {"root", "train", "val", "devkit"} paths of
        ILSVRC2012_img_train.tar (tar of <wnid>.tar), ILSVRC2012_img_val.tar (flat) and
        ILSVRC2012_devkit_t12.tar.gz (data/meta.mat via scipy.io.savemat + ground truth)

Devkit ILSVRC2012_IDs are deliberately NOT in WNID order (as in the real devkit), so a converter
that labels by devkit id instead of sorted WNID position gets the val labels wrong.

oddities=True adds, to train: a CMYK JPEG, a grayscale JPEG, a PNG named .JPEG, a JPEG with EXIF
orientation 6, a truncated JPEG and random bytes named .JPEG (both undecodable), and a README.txt
(not an image); to val: a CMYK JPEG and a truncated JPEG. `expected(root)` returns what a correct
converter must report (written to root/fixture.json): classes, counts per split and class, the
skipped names for that layout, and the stems of the decodable train oddities whose true picture
is saved losslessly as root/reference/<stem>.png (outside train/ and val/). These fixtures are
a subset of ImageNet: convert them with allow_subset=True.

    make_cifar_tar(path, dataset="cifar10", train_per_class=4, test_per_class=2) -> dict
        a tarball in the official python layout (protocol-2 pickles) with random pixels;
        returns {"path", "classes", "train": (images NHWC uint8, labels), "test": (...)}.

Readers for checking converted records with the libraries' own code:
    read_beton(path) -> [(RGB array, label)]   via ffcv.reader.Reader (no numba JIT)
    read_webdataset(folder) -> [(key, RGB array, label)]   via DALI fn.readers.webdataset (CPU)
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipelines import DataConfig
from pipelines.ops import unnormalize
from records import format as fmt

ROOT = Path(__file__).resolve().parents[1]


@cache
def _photo(name: str) -> np.ndarray:
    """A scikit-image sample image as it comes (2-D for grayscale ones)."""
    import skimage.data

    return getattr(skimage.data, name)()


# ----------------------------------------------------------------------------- pixels
CIFAR10_TEST_MEAN = np.array([0.4942, 0.4851, 0.4504])


def as_uint8_hwc(images: torch.Tensor, cfg: DataConfig) -> np.ndarray:
    """Un-normalize back to the stored uint8 pixels (exact for un-augmented CIFAR)."""
    pixels = (unnormalize(images, cfg) * 255).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()


def digests(images: np.ndarray) -> list[str]:
    return [hashlib.blake2b(image.tobytes(), digest_size=12).hexdigest() for image in images]


# ----------------------------------------------------------------------------- tiny records
def write_cifar_records(folder: Path, arrays: dict, dataset: str = "cifar10") -> Path:
    """folder/<dataset> in the "arrays" format from {split: (uint8 NHWC images, labels)} of
    the stored splits (train, test), with a manifest made by records.format."""
    from tools.converter.writers.atomic import sha256_file

    root = Path(folder) / dataset
    n_classes = 100 if dataset == "cifar100" else 10
    splits, files = {}, {}
    for split, (images, labels) in arrays.items():
        labels = np.asarray(labels, dtype=np.int64)
        for rel, array in zip(fmt.array_rels(split), (images, labels)):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            np.save(root / rel, array)
            files[rel] = sha256_file(root / rel)
        splits[split] = {"count": len(labels),
                         "per_class": np.bincount(labels, minlength=n_classes).tolist()}
    fmt.write_manifest(root, fmt.make_manifest(
        dataset=dataset, formats=["arrays"], source="test fixture", settings={},
        classes=[f"class{i}" for i in range(n_classes)], splits=splits, files=files,
        root=root))
    return root


def write_tiny_cifar(folder: Path, n_train: int = 480, n_test: int = 120, seed: int = 0) -> Path:
    """CIFAR-10 records whose classes are colours plus noise, so a few iterations already
    learn something."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 216, size=(10, 3))
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.permutation(np.arange(n) % 10)
        images = colours[labels][:, None, None, :] + rng.normal(0, 25, size=(n, 32, 32, 3))
        arrays[split] = images.clip(0, 255).astype(np.uint8), labels
    return write_cifar_records(folder, arrays)


def write_imagenet_records(folder: Path, splits: dict, shard_size: int = 1000,
                           n_classes: int = 1000) -> Path:
    """folder/imagenet in the "webdataset" format from {split: [(key, JPEG bytes, label)]} for
    train and val, through the converter's ShardWriter, with a manifest."""
    from tools.converter.writers.atomic import OutputDir
    from tools.converter.writers.webdataset import ShardWriter

    root = Path(folder) / "imagenet"
    out = OutputDir(root, fingerprint="test fixture")
    files, info = {}, {}
    try:
        for split, samples in splits.items():
            for number, start in enumerate(range(0, len(samples), shard_size)):
                shard = ShardWriter(out, fmt.shard_rel(split, number))
                for key, jpeg, label in samples[start:start + shard_size]:
                    shard.add(key, jpeg, label)
                files.update(shard.commit())
            counts = np.bincount([label for _, _, label in samples], minlength=n_classes)
            info[split] = {"count": len(samples), "per_class": counts.tolist()}
        out.write_manifest(fmt.make_manifest(
            dataset="imagenet", formats=["webdataset"], source="test fixture", settings={},
            classes=[wnid(i) for i in range(n_classes)], splits=info, files=files,
            root=root))
    finally:
        out.close()
    return root


def write_tiny_imagenet(folder: Path, n: int = 3) -> Path:
    """ImageNet records with a few random JPEGs per split in one shard each."""
    rng = np.random.default_rng(0)
    splits = {}
    for split in ("train", "val"):
        samples = []
        for i in range(n):
            h, w = [(256, 320), (300, 256), (280, 280)][i % 3]
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                buffer, format="JPEG")
            samples.append((f"{split}_{i:04d}", buffer.getvalue(), i % 1000))
        splits[split] = samples
    return write_imagenet_records(folder, splits)


def tiny_args(records: Path, out: Path, name: str, *extra: str) -> list[str]:
    """quickstart.yaml on write_tiny_cifar's records: 480 - 64 val = 416 train images, batch
    32 -> 13 iterations per epoch, 2 epochs at a constant lr."""
    return ["configs/quickstart.yaml", f"data.root={records}", "data.val_size=64",
            "data.batch_size=32", "data.eval_batch_size=64", "schedule.unit=epoch",
            "schedule.total=2", "schedule.milestones=[]", f"run.out_dir={out}",
            f"run.name={name}", "run.threads=1", "run.log_every=4", "run.ckpt_every=5",
            "run.device=cpu", *extra]


def subprocess_env() -> dict:
    """The environment for a child `python train/run.py` (or torchrun): no inherited DDP
    variables, one thread, the repository on the import path."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    path = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}


# ----------------------------------------------------------------------------- torchrun
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_command(node: int, port: int, run_id: str, script, *args, nodes: int = 2) -> list:
    """torchrun for node `node` of `nodes`, all on this host, one process each: the c10d
    rendezvous at 127.0.0.1:port, as on real nodes. c10d numbers the nodes by their address,
    not by --node-rank: node n calls itself 127.0.0.<n + 1>, so node 0 gets global rank 0."""
    return [*TORCHRUN, "--nnodes", str(nodes), "--nproc-per-node", "1", "--rdzv-backend",
            "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", run_id,
            "--local-addr", f"127.0.0.{node + 1}", str(script), *map(str, args)]


@dataclass
class Ended:
    returncode: int
    output: str  # stdout and stderr
    ended: float  # time.time() when it was seen to exit


def run_together(commands: list[tuple[list, Path]], env: dict, logs: Path,
                 timeout: float) -> list[Ended]:
    """Start every (command, cwd) at once, each one's output into logs/<i>.log, and wait for
    all of them (each killed, and the test failed, after `timeout` seconds)."""
    logs.mkdir(parents=True, exist_ok=True)
    procs, files, ended = [], [], {}
    try:
        for i, (command, cwd) in enumerate(commands):
            files.append(open(logs / f"{i}.log", "w"))
            procs.append(subprocess.Popen(command, cwd=cwd, env=env, stdout=files[-1],
                                          stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + timeout
        while len(ended) < len(procs) and time.monotonic() < deadline:
            for i, proc in enumerate(procs):
                if i not in ended and proc.poll() is not None:
                    ended[i] = time.time()
            time.sleep(0.05)
    finally:
        for proc in procs:
            if proc.poll() is None:  # its whole session: the agent and its workers
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for f in files:
            f.close()
    assert len(ended) == len(procs), (
        f"still running after {timeout} s: "
        + "\n".join((logs / f"{i}.log").read_text()[-3000:] for i in range(len(procs))
                    if i not in ended))
    return [Ended(proc.returncode, (logs / f"{i}.log").read_text(), ended[i])
            for i, proc in enumerate(procs)]


# ----------------------------------------------------------------------------- pattern fixture
# (height, width): a mix of landscape, portrait and square, all with shorter side >= 256 after
# the train rescale (which always rescales, up or down).
# Small sources keep the many-draw statistics cheap (decoding is most of the cost).
TRAIN_PATTERN_SIZES = [(256, 320), (320, 256), (300, 220), (256, 256), (200, 300), (240, 320),
                       (320, 240), (288, 288), (250, 333), (200, 300), (330, 240), (220, 220),
                       (270, 360), (360, 270), (300, 300), (256, 400)]
TRAIN_UNIFORM_COLOURS = [(128, 128, 128), (200, 60, 40), (40, 160, 220), (90, 200, 90),
                         (230, 230, 200), (30, 30, 60), (180, 120, 200), (100, 80, 30)]
UNIFORM_SIZE = (64, 80)
VAL_PATTERN_SIZES = [(320, 400), (400, 320), (375, 500), (500, 375), (256, 300), (300, 256)]
PATTERN_PHOTOS = ["astronaut", "chelsea", "coffee", "rocket"]
PATTERN_QUALITY = 98


@dataclass(frozen=True)
class Item:
    label: int
    kind: str  # "pattern" | "uniform" | "photo"
    size: tuple[int, int]  # (height, width)
    colour: tuple[int, int, int] | None = None
    photo: str | None = None


def wnid(label: int) -> str:
    return f"n{label:08d}"


def train_items() -> list[Item]:
    items = [Item(i, "pattern", size) for i, size in enumerate(TRAIN_PATTERN_SIZES)]
    base = len(items)
    items += [Item(base + i, "uniform", UNIFORM_SIZE, colour)
              for i, colour in enumerate(TRAIN_UNIFORM_COLOURS)]
    return items


def val_items() -> list[Item]:
    items = [Item(i, "pattern", size) for i, size in enumerate(VAL_PATTERN_SIZES)]
    base = len(items)
    for i, name in enumerate(PATTERN_PHOTOS):
        items.append(Item(base + i, "photo", photo_array(name).shape[:2], photo=name))
    return items


def ramp_image(height: int, width: int) -> np.ndarray:
    x = np.round(np.linspace(0, 255, width))[None, :].repeat(height, 0)
    y = np.round(np.linspace(0, 255, height))[:, None].repeat(width, 1)
    return np.stack([x, y, np.full_like(x, 128)], axis=2).astype(np.uint8)


def photo_array(name: str) -> np.ndarray:
    """A scikit-image sample photo as RGB uint8."""
    image = _photo(name)
    return image[..., :3] if image.ndim == 3 else np.repeat(image[..., None], 3, 2)


def item_array(item: Item) -> np.ndarray:
    if item.kind == "pattern":
        return ramp_image(*item.size)
    if item.kind == "uniform":
        return np.broadcast_to(np.array(item.colour, np.uint8), (*item.size, 3)).copy()
    return photo_array(item.photo)


def jpeg_bytes(array: np.ndarray, quality: int = PATTERN_QUALITY) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


def write_folder(root: Path, splits: dict[str, list[tuple[int, str, np.ndarray]]],
                 n_classes: int, quality: int = PATTERN_QUALITY) -> Path:
    """ImageNet folder layout: root/<split>/<wnid>/<name>.JPEG; every class folder exists in
    train so that class index = position in the sorted WNIDs."""
    for label in range(n_classes):
        (root / "train" / wnid(label)).mkdir(parents=True, exist_ok=True)
    for split, images in splits.items():
        for label, name, array in images:
            folder = root / split / wnid(label)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}.JPEG").write_bytes(jpeg_bytes(array, quality))
    return root


def write_pattern_folder(root: Path) -> Path:
    splits = {
        "train": [(it.label, f"train_{it.label:03d}", item_array(it)) for it in train_items()],
        "val": [(it.label, f"val_{it.label:03d}", item_array(it)) for it in val_items()],
    }
    return write_folder(root, splits, n_classes=len(train_items()))


def to_records(folder: Path, out: Path) -> Path:
    """Convert an ImageNet folder into the records of every installed format."""
    import importlib.util

    from tools.converter.cli import convert

    formats = ["webdataset"] + (["ffcv"] if importlib.util.find_spec("ffcv") else [])
    # Quality 98 for the images FFCV re-encodes, so its ramps stay as clean as the originals.
    return Path(convert("imagenet", src=folder, out=out, formats=formats, allow_subset=True,
                        jpeg_quality=98, quiet=True))


# ----------------------------------------------------------------------------- read back
def _fit(profile: np.ndarray, trim: int = 3) -> tuple[float, float]:
    j = np.arange(len(profile))[trim:-trim]
    slope, intercept = np.polyfit(j, profile[trim:-trim], 1)
    return float(slope), float(intercept)


def recover_geometry(crop: np.ndarray, size: tuple[int, int]) -> dict:
    """From a train crop (3, c, c) on the 0-255 scale of a pattern image of `size` (h, w):
    the shorter side it was rescaled to (from x and from y), whether it was mirrored, and the
    crop's top/left in the rescaled image (pixels)."""
    height, width = size
    c = crop.shape[-1]
    slope_x, icpt_x = _fit(crop[0].mean(axis=0))
    slope_y, icpt_y = _fit(crop[1].mean(axis=1))
    flipped = slope_x < 0
    if flipped:  # the mirrored profile is R(c - 1 - j): undo it
        slope_x, icpt_x = -slope_x, icpt_x + slope_x * (c - 1)
    fx = 255.0 / ((width - 1) * slope_x)
    fy = 255.0 / ((height - 1) * slope_y)
    # value(j) = 255/(W-1) * ((left + j + 0.5) / f - 0.5)  =>  left = (v0 (W-1)/255 + 0.5) f - 0.5
    left = (icpt_x * (width - 1) / 255 + 0.5) * fx - 0.5
    top = (icpt_y * (height - 1) / 255 + 0.5) * fy - 0.5
    short = min(height, width)
    return {"scale_x": fx * short, "scale_y": fy * short, "flipped": bool(flipped),
            "left": left, "top": top, "resized": (height * fy, width * fx)}


# ----------------------------------------------------------------------------- source fixtures
FIXTURE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
          "immunohistochemistry", "retina", "colorwheel")
TRAIN_TAR, VAL_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"
DEVKIT, DEVKIT_DIR = "ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_devkit_t12"


def _random_view(rng: np.random.Generator, gray: bool = False,
                 short_side: tuple[int, int] = (300, 700)) -> Image.Image:
    src = _photo("camera") if gray else _photo(FIXTURE_PHOTOS[rng.integers(len(FIXTURE_PHOTOS))])
    h, w = src.shape[:2]
    ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    img = Image.fromarray(src[y:y + ch, x:x + cw])
    short = int(rng.integers(short_side[0], short_side[1] + 1))
    scale = short / min(img.size)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                      Image.Resampling.BICUBIC)


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _oddity(kind: str, rng: np.random.Generator) -> tuple[bytes, bool, Image.Image | None]:
    """(file bytes, decodable, the RGB/L picture it should decode to, before JPEG loss)."""
    view = _random_view(rng, gray=kind == "gray")
    if kind == "cmyk":
        return _jpeg(view.convert("CMYK")), True, view
    if kind == "gray":
        return _jpeg(view), True, view
    if kind == "png":
        buf = io.BytesIO()
        view.save(buf, "PNG")
        return buf.getvalue(), True, view
    if kind == "exif":  # stored unrotated: converters must not apply the orientation tag
        exif = Image.Exif()
        exif[0x0112] = 6
        return _jpeg(view, exif=exif.tobytes()), True, view
    if kind == "truncated":
        data = _jpeg(view)
        return data[: len(data) // 2], False, None
    if kind == "garbage":
        return rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), False, None
    raise ValueError(kind)


TRAIN_ODDITIES = ("cmyk", "gray", "png", "exif", "truncated", "garbage")
VAL_ODDITIES = ("cmyk", "truncated")


def _plan(classes: int, per_class: int, val_per_class: int, oddities: bool, seed: int) -> dict:
    """Every fixture file: train {wnid: [(name, bytes, ok)]}, val [(wnid, bytes, ok)]."""
    rng = np.random.default_rng(seed)
    wnids = [f"n{i + 1:08d}" for i in range(classes)]
    train = {w: [(f"{w}_{j}.JPEG", _jpeg(_random_view(rng)), True) for j in range(per_class)]
             for w in wnids}
    val = [(w, _jpeg(_random_view(rng)), True) for w in wnids for _ in range(val_per_class)]
    references = {}
    if oddities:
        for i, kind in enumerate(TRAIN_ODDITIES):
            wnid = wnids[i % classes]
            data, ok, reference = _oddity(kind, rng)
            train[wnid].append((f"{wnid}_{kind}.JPEG", data, ok))
            if reference is not None:
                references[f"{wnid}_{kind}"] = reference
        train[wnids[-1]].append(("README.txt", b"not an image\n", False))
        for i, kind in enumerate(VAL_ODDITIES):
            val.append((wnids[i % classes], *_oddity(kind, rng)[:2]))
    order = rng.permutation(len(val))  # val numbering mixes the classes, as in the real set
    val = [val[i] for i in order]
    return {"wnids": wnids, "train": train, "val": val, "references": references}


def _write_references(root: Path, plan: dict) -> None:
    """Lossless pictures of the train oddities, keyed by file stem, beside (not in) the data."""
    if plan["references"]:
        (root / "reference").mkdir(parents=True, exist_ok=True)
    for stem, img in plan["references"].items():
        img.save(root / "reference" / f"{stem}.png")


def _val_name(n: int) -> str:
    return f"ILSVRC2012_val_{n + 1:08d}.JPEG"


def _expected(plan: dict, layout: str) -> dict:
    wnids = plan["wnids"]
    train_pc = [sum(ok for _, _, ok in plan["train"][w]) for w in wnids]
    val_pc = [sum(ok for v, _, ok in plan["val"] if v == w) for w in wnids]
    skipped = []
    for w in wnids:
        for name, _, ok in plan["train"][w]:
            if not ok:
                skipped.append(f"train/{w}/{name}" if layout == "folders"
                               else f"{TRAIN_TAR}:{w}.tar/{name}")
    for n, (w, _, ok) in enumerate(plan["val"]):
        if not ok:
            skipped.append(f"val/{w}/{_val_name(n)}" if layout == "folders"
                           else f"{VAL_TAR}:{_val_name(n)}")
    return {"classes": wnids, "layout": layout, "skipped": sorted(skipped),
            "references": sorted(plan["references"]),
            "splits": {"train": {"count": sum(train_pc), "per_class": train_pc},
                       "val": {"count": sum(val_pc), "per_class": val_pc}}}


def expected(root) -> dict:
    return json.loads((Path(root) / "fixture.json").read_text())


def make_imagenet_folder(root, classes: int = 4, per_class: int = 6, val_per_class: int = 2,
                         oddities: bool = True, devkit: bool = False, seed: int = 0) -> Path:
    root = Path(root)
    plan = _plan(classes, per_class, val_per_class, oddities, seed)
    for wnid, files in plan["train"].items():
        (root / "train" / wnid).mkdir(parents=True, exist_ok=True)
        for name, data, _ in files:
            (root / "train" / wnid / name).write_bytes(data)
    for n, (wnid, data, _) in enumerate(plan["val"]):
        (root / "val" / wnid).mkdir(parents=True, exist_ok=True)
        (root / "val" / wnid / _val_name(n)).write_bytes(data)
    if devkit:
        (root / DEVKIT).write_bytes(_devkit(plan))
    _write_references(root, plan)
    (root / "fixture.json").write_text(json.dumps(_expected(plan, "folders"), indent=1))
    return root


# ----------------------------------------------------------------------------- folder dataset
FOLDER_CLASSES = ("cat", "coffee mug", "rocket")  # a space: names are kept as they are
FOLDER_PHOTOS = {"cat": "chelsea", "coffee mug": "coffee", "rocket": "rocket"}
FOLDER_SIDE = (40, 72)  # small photos: the converter's and loaders' cost is per pixel


def small_photo(name: str, rng: np.random.Generator, mode: str = "RGB") -> Image.Image:
    """A random crop of a scikit-image photo, its shorter side in FOLDER_SIDE."""
    src = _photo(name)
    h, w = src.shape[:2]
    ch, cw = int(h * rng.uniform(0.5, 0.9)), int(w * rng.uniform(0.5, 0.9))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    img = Image.fromarray(src[y:y + ch, x:x + cw])
    scale = int(rng.integers(FOLDER_SIDE[0], FOLDER_SIDE[1] + 1)) / min(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.BICUBIC).convert(mode)


def _encoded(img: Image.Image, format_name: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format_name, **kw)
    return buf.getvalue()


def folder_oddities(rng: np.random.Generator) -> dict[str, tuple[bytes, str | None]]:
    """{file name: (bytes, None if it decodes else the skip reason's start)}: what a folder of
    one's own photos holds besides plain JPEGs."""
    photo = small_photo("chelsea", rng)
    grey16 = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    jpeg = _encoded(photo, "JPEG", quality=90)
    return {
        "cmyk.jpg": (_encoded(photo.convert("CMYK"), "JPEG", quality=90), None),
        "grey.jpeg": (_encoded(photo.convert("L"), "JPEG", quality=90), None),
        "grey16.png": (_encoded(Image.fromarray(grey16), "PNG"), None),
        "exif.jpg": (_encoded(photo, "JPEG", quality=90, exif=exif.tobytes()), None),
        "palette.png": (_encoded(photo.convert("P"), "PNG"), None),
        "photo.webp": (_encoded(photo, "WEBP", quality=90), None),
        "truncated.jpg": (jpeg[:len(jpeg) // 2], "OSError"),
        "not-a-photo.jpg": (b"hello, world\n" * 20, "not a recognised image format"),
        "notes.txt": (b"a note\n", "not an image file extension"),
    }


def make_image_folder(root, train_per_class: int = 8, val_per_class: int | None = 2,
                      oddities: bool = False, seed: int = 0) -> Path:
    """root/train/<class>/*.jpg (and root/val/<class>/ unless val_per_class is None) of small
    real photos, one scikit-image photo per class; with oddities, folder_oddities() in the
    first class's train folder and a symbolic link loop beside them."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for name in FOLDER_CLASSES if count is not None else ():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                photo = small_photo(FOLDER_PHOTOS[name], rng)
                (folder / f"{name[:3]}_{i:03d}.jpg").write_bytes(
                    _encoded(photo, "JPEG", quality=90))
    if oddities:
        folder = root / "train" / FOLDER_CLASSES[0]
        for name, (data, _) in folder_oddities(rng).items():
            (folder / name).write_bytes(data)
        (folder / "loop.jpg").symlink_to("loop.jpg")
    return root


def _tar_bytes(members: list[tuple[str, bytes]], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _devkit(plan: dict) -> bytes:
    import scipy.io

    wnids = plan["wnids"]
    ids = {w: len(wnids) - i for i, w in enumerate(wnids)}  # reversed: ids != WNID order
    fields = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
              "wordnet_height", "num_train_images")
    rows = [(ids[w], w, f"photo class {w}", "a fixture class", 0, np.zeros(0), 0,
             len(plan["train"][w])) for w in wnids]
    # Two non-leaf synsets, as the real meta.mat has (860 of them): never classes.
    rows += [(len(wnids) + 1, "n09999998", "entity", "root", 1, np.array([len(wnids) + 2]), 2, 0),
             (len(wnids) + 2, "n09999999", "object", "inner", len(wnids),
              np.arange(1, len(wnids) + 1), 1, 0)]
    synsets = np.zeros(len(rows), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        synsets[i] = row
    mat = io.BytesIO()
    scipy.io.savemat(mat, {"synsets": synsets})
    truth = "".join(f"{ids[w]}\n" for w, _, _ in plan["val"]).encode()
    return _tar_bytes([(f"{DEVKIT_DIR}/data/meta.mat", mat.getvalue()),
                       (f"{DEVKIT_DIR}/data/ILSVRC2012_validation_ground_truth.txt", truth)],
                      mode="w:gz")


def make_imagenet_tars(root, classes: int = 4, per_class: int = 6, val_per_class: int = 2,
                       oddities: bool = True, seed: int = 0, train_extra=(), class_extra=(),
                       devkit: bool = True) -> dict:
    """train_extra: (name, bytes) members added to the outer train tar; class_extra: added to
    the first class's inner tar (for hostile-archive tests)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    plan = _plan(classes, per_class, val_per_class, oddities, seed)
    inner = []
    for i, (wnid, files) in enumerate(plan["train"].items()):
        extra = list(class_extra) if i == 0 else []
        inner.append((f"{wnid}.tar", _tar_bytes([(n, d) for n, d, _ in files] + extra)))
    paths = {"root": root, "train": root / TRAIN_TAR, "val": root / VAL_TAR,
             "devkit": root / DEVKIT}
    paths["train"].write_bytes(_tar_bytes(inner + list(train_extra)))
    paths["val"].write_bytes(_tar_bytes([(_val_name(n), d) for n, (_, d, _) in
                                         enumerate(plan["val"])]))
    if devkit:
        paths["devkit"].write_bytes(_devkit(plan))
    _write_references(root, plan)
    (root / "fixture.json").write_text(json.dumps(_expected(plan, "archives"), indent=1))
    return paths


CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", "labels", "label_names", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels",
                 "fine_label_names", 100),
}


def make_cifar_tar(path, dataset: str = "cifar10", train_per_class: int = 4,
                   test_per_class: int = 2, seed: int = 0, members: dict | None = None) -> dict:
    """members: {path in tar: bytes} replacing or adding raw members (hostile-input tests)."""
    folder, train_files, test_files, meta, label_key, names_key, k = CIFAR_LAYOUT[dataset]
    rng = np.random.default_rng(seed)
    classes = [f"class_{i:02d}" for i in range(k)]
    out = {"path": Path(path), "classes": classes}
    raw = {}
    for split, files, per in (("train", train_files, train_per_class),
                              ("test", test_files, test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(k), per))
        images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
        out[split] = (images, labels.astype(np.int64))
        rows = images.transpose(0, 3, 1, 2).reshape(len(labels), 3072)
        for name, idx in zip(files, np.array_split(np.arange(len(labels)), len(files))):
            entry = {"batch_label": f"{split} batch", label_key: labels[idx].tolist(),
                     "data": rows[idx], "filenames": [f"img_{i}.png" for i in idx]}
            if dataset == "cifar100":
                entry["coarse_labels"] = (labels[idx] // 5).tolist()
            raw[f"{folder}/{name}"] = pickle.dumps(entry, protocol=2)
    meta_entry = {names_key: classes}
    if dataset == "cifar100":
        meta_entry["coarse_label_names"] = [f"super_{i}" for i in range(20)]
    raw[f"{folder}/{meta}"] = pickle.dumps(meta_entry, protocol=2)
    raw.update(members or {})
    Path(path).write_bytes(_tar_bytes(list(raw.items()), mode="w:gz"))
    return out


def read_beton(path) -> list[tuple[np.ndarray, int]]:
    """Every (RGB image, label) of a .beton through ffcv's own Reader (no numba Loader): raw
    pixels as stored, JPEG samples decoded with PIL."""
    from ffcv.reader import Reader

    reader = Reader(str(path))
    data = np.memmap(path, dtype=np.uint8, mode="r")
    sizes = {int(r["sample_id"]): int(r["size"]) for r in reader.alloc_table}
    out = []
    for i, (image, label) in enumerate(reader.metadata):
        mode, width, height, ptr = (int(v) for v in image)
        blob = data[ptr: ptr + sizes[i]]
        if mode == 1:  # raw
            pixels = np.array(blob[: height * width * 3]).reshape(height, width, 3)
        else:
            pixels = np.asarray(Image.open(io.BytesIO(blob.tobytes())).convert("RGB"))
        out.append((pixels, int(label)))
    return out


def read_webdataset(folder, batch_size: int = 8) -> list[tuple[str, np.ndarray, int]]:
    """Every (key, decoded RGB image, label) of folder/shard-*.tar via DALI's own
    fn.readers.webdataset (with the .idx files) and CPU image decoder, in shard order."""
    from nvidia.dali import fn, pipeline_def, types

    tars = sorted(str(p) for p in Path(folder).glob("shard-*.tar"))
    idx = [fmt.shard_index_rel(t) for t in tars]

    @pipeline_def(batch_size=batch_size, num_threads=1, device_id=None)
    def pipe():
        jpg, cls = fn.readers.webdataset(paths=tars, index_paths=idx, ext=["jpg", "cls"],
                                         missing_component_behavior="error", name="reader")
        return (fn.decoders.image(jpg, device="cpu", output_type=types.RGB), cls,
                fn.get_property(jpg, key="source_info"))

    p = pipe()
    p.build()
    total = p.reader_meta("reader")["epoch_size"]
    out = []
    while len(out) < total:
        images, labels, infos = p.run()
        for i in range(len(images)):
            if len(out) < total:
                info = bytes(np.array(infos.at(i))).decode()
                key = info.rsplit(":", 1)[-1].rsplit("/", 1)[-1].split(".")[0]
                out.append((key, np.array(images.at(i)),
                            int(bytes(np.array(labels.at(i))).decode())))
    return out


class FullDisk:
    """A file whose write stores half of the data, then fails as a full disk does (`before`:
    called first, e.g. to note that the fault fired)."""

    def __init__(self, file, before=None):
        self.file, self.before = file, before

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def write(self, data):
        if self.before is not None:
            self.before()
        self.file.write(bytes(data[:len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
