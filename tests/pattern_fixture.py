"""ImageNet-format fixture whose pixels say where they came from.

Pattern images: R = linear ramp in x (0 at the left edge, 255 at the right), G = ramp in y,
B = 128, so the scale, crop offset and flip of any crop can be read back from its ramps
(`recover_geometry`). Uniform images (one colour each) show PCA lighting as a pure per-image
shift. A few real photos (scikit-image's) give texture for decoder/resizer comparisons.
Every train image has its own class, so a sample is identified by its label.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket"]
JPEG_QUALITY = 98


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
    for i, name in enumerate(PHOTOS):
        items.append(Item(base + i, "photo", photo_array(name).shape[:2], photo=name))
    return items


def ramp_image(height: int, width: int) -> np.ndarray:
    x = np.round(np.linspace(0, 255, width))[None, :].repeat(height, 0)
    y = np.round(np.linspace(0, 255, height))[:, None].repeat(width, 1)
    return np.stack([x, y, np.full_like(x, 128)], axis=2).astype(np.uint8)


def photo_array(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    return image[..., :3] if image.ndim == 3 else np.repeat(image[..., None], 3, 2)


def item_array(item: Item) -> np.ndarray:
    if item.kind == "pattern":
        return ramp_image(*item.size)
    if item.kind == "uniform":
        return np.broadcast_to(np.array(item.colour, np.uint8), (*item.size, 3)).copy()
    return photo_array(item.photo)


def jpeg_bytes(array: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


def write_folder(root: Path, splits: dict[str, list[tuple[int, str, np.ndarray]]],
                 n_classes: int, quality: int = JPEG_QUALITY) -> Path:
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


def write_photo_folder(root: Path, n_train: int, n_val: int, n_classes: int = 10,
                       seed: int = 0) -> Path:
    """Photo-like JPEGs of ImageNet-typical sizes (random crops/rescales of scikit-image's
    photos, quality 90) for benchmarks."""
    rng = np.random.default_rng(seed)
    names = PHOTOS + ["hubble_deep_field", "retina", "immunohistochemistry"]
    sources = [Image.fromarray(photo_array(name)) for name in names]
    splits = {}
    for split, count in (("train", n_train), ("val", n_val)):
        images = []
        for i in range(count):
            source = sources[rng.integers(len(sources))]
            w, h = source.size
            cw, ch = int(w * rng.uniform(0.6, 1)), int(h * rng.uniform(0.6, 1))
            left, top = int(rng.integers(w - cw + 1)), int(rng.integers(h - ch + 1))
            short = int(rng.integers(300, 500))
            scale = short / min(cw, ch)
            crop = source.crop((left, top, left + cw, top + ch))
            crop = crop.resize((round(cw * scale), round(ch * scale)), Image.Resampling.BILINEAR)
            images.append((i % n_classes, f"{split}_{i:06d}", np.asarray(crop)))
        splits[split] = images
    return write_folder(root, splits, n_classes=n_classes, quality=90)


def to_records(folder: Path, out: Path) -> Path:
    """Convert an ImageNet folder into the records of every installed format."""
    import importlib.util

    from tools.convert import convert

    formats = ["dali"] + (["ffcv"] if importlib.util.find_spec("ffcv") else [])
    # Quality 98 for the images FFCV re-encodes, so its ramps stay as clean as the originals.
    return Path(convert("imagenet", src=folder, out=out, formats=formats, allow_subset=True,
                        jpeg_quality=98, quiet=True))


_records: dict[Path, Path] = {}


def pattern_records_for(tmp_path_factory) -> Path:
    """The pattern fixture converted to records (DIR/imagenet), once per test session: test
    modules wrap this in their own `pattern_records` fixture."""
    base = tmp_path_factory.getbasetemp()
    if base not in _records:
        folder = write_pattern_folder(tmp_path_factory.mktemp("pattern_src"))
        _records[base] = to_records(folder, tmp_path_factory.mktemp("pattern_records"))
    return _records[base]


@pytest.fixture(scope="session")
def pattern_records(tmp_path_factory) -> Path:
    """The fixture for modules that import it (`from pattern_fixture import pattern_records`)."""
    return pattern_records_for(tmp_path_factory)


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
