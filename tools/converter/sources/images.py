"""Decode any source image to RGB, cap its shorter side, and (re-)encode it as a JPEG.

One deterministic function serves every output format, so the FFCV and DALI records of an image
hold the same pixels before their own JPEG encoding.
"""
from __future__ import annotations

import io
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

EXIF_ORIENTATION = 0x0112
TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class BadImage(ValueError):
    """The bytes are not a complete, decodable image (the reason is the message)."""


@dataclass
class Prepared:
    image: Image.Image  # RGB, shorter side <= max_side
    passthrough: bool  # the source bytes already are this exact image as a plain RGB JPEG

    def array(self) -> np.ndarray:
        arr = np.asarray(self.image)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise BadImage(f"decoded to {arr.dtype} {arr.shape}, expected uint8 HxWx3")
        return arr


def fit_shorter(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(w, h) scaled down so that min(w, h) == max_side; unchanged when already small enough."""
    w, h = size
    short = min(w, h)
    if short <= max_side:
        return size
    scale = max_side / short
    return (max_side if w == short else max(1, round(w * scale)),
            max_side if h == short else max(1, round(h * scale)))


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):  # 16-bit grey: scale, not clip
        levels = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(np.clip(np.rint(levels), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")  # composite on white rather than keep what hides under alpha
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
        return rgb
    return img.convert("RGB")  # L, CMYK (Adobe-inverted handled by PIL), P, ...


def _orientation(img: Image.Image) -> int | None:
    try:
        return img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block does not make the pixels bad; just re-encode
        return None


@contextmanager
def _decoding():
    """Every way PIL fails on bad bytes, as one BadImage with the reason."""
    try:
        yield
    except UnidentifiedImageError:
        raise BadImage("not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImage(f"{type(err).__name__}: {err}") from None


def prepare(data: bytes, max_side: int, upright: bool = False) -> Prepared:
    """Decode fully (so truncation is caught), convert to RGB, cap the shorter side. upright:
    turn the image as its EXIF orientation says (how viewers show a photo); else the pixels
    stay as stored (ImageNet's convention, and torchvision's PIL loader's)."""
    with _decoding():
        img = Image.open(io.BytesIO(data))
        fmt, mode = img.format, img.mode
        orientation = _orientation(img)
        turned = upright and orientation in TRANSPOSED
        size = img.size[::-1] if turned else img.size
        target = fit_shorter(size, max_side)
        if fmt == "JPEG" and target != size:
            img.draft(None, target[::-1] if turned else target)  # DCT downscale by 2/4/8
        img.load()
        rgb = _to_rgb(ImageOps.exif_transpose(img) if upright and orientation not in (None, 1)
                      else img)
        if rgb.size != target:
            rgb = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    # DALI applies EXIF orientation, PIL/FFCV do not: re-encode (dropping EXIF) so all agree.
    passthrough = fmt == "JPEG" and mode == "RGB" and target == size and orientation == 1
    return Prepared(rgb, passthrough)


def passthrough_nbytes(data: bytes, max_side: int) -> int | None:
    """H*W*3 when prepare() would store `data` byte for byte (an RGB JPEG within the cap, EXIF
    orientation 1) and it decodes whole; None when prepare() must decide. It decodes at 1/8
    scale: libjpeg still entropy-decodes every block, so a truncated or corrupt file fails here
    as it does at full scale, at about 1.7x the speed (no inverse DCT or colour conversion of
    the full image)."""
    with _decoding():
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if (img.format != "JPEG" or img.mode != "RGB" or _orientation(img) != 1
                or fit_shorter(img.size, max_side) != img.size):
            return None
        img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
        img.load()
    return width * height * 3


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()
