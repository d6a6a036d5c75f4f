"""Crops of differently sized images, resampled as one batch.

"Resize the shorter side to S, then cut a crop" is, per axis, a matrix: each output pixel is a
weighted sum of source pixels, with the weights of torchvision's antialiased bilinear resize of
the whole image (PIL's triangle filter, widened by the scale when shrinking). Only the crop's
rows of that matrix are needed, and they touch only a window of the source: so each image's
window is cut out, the windows are padded into one tensor, and two batched matrix products
(rows, then columns) make the whole batch's crops. The result equals resize-then-crop up to
float rounding (tests/test_resample.py); a mirror flip is the column matrix reversed.

The window bounds are computed on the host (the sizes are Python ints there) and the weights on
the images' device, both in float64 from the same formula, so they agree exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Crops:
    """Per image of a batch: its source size, the size the whole image is resized to, and the
    crop's top-left corner in that resized image (all (B,) int64 arrays); crop size; flips."""

    height: np.ndarray
    width: np.ndarray
    resized_h: np.ndarray
    resized_w: np.ndarray
    top: np.ndarray
    left: np.ndarray
    size: int
    flip: np.ndarray | None = None  # (B,) bool: mirror left-right


def resized_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """torchvision's resize([shorter]) output size: shorter side to `shorter`, the longer
    scaled and truncated."""
    if height <= width:
        return shorter, int(shorter * width / height)
    return int(shorter * height / width), shorter


def _bounds(in_size, out_size, start, count: int, xp):
    """First and one-past-last source index each of the `count` outputs from `start` reads:
    (B, count) arrays of float64 (numpy on the host, torch on the device: one formula)."""
    scale = in_size / out_size
    support = xp.maximum(scale, 1.0) if xp is np else scale.clamp(min=1.0)
    offsets = xp.arange(count, dtype=xp.float64)
    if xp is torch:
        offsets = offsets.to(scale.device)
    center = (start[:, None] + offsets + 0.5) * scale[:, None]
    low = xp.floor(center - support[:, None] + 0.5)
    high = xp.floor(center + support[:, None] + 0.5)
    low = xp.maximum(low, xp.zeros_like(low))
    high = xp.minimum(high, in_size[:, None] + xp.zeros_like(high))
    return center, support, low, high


def windows(in_size: np.ndarray, out_size: np.ndarray, start: np.ndarray, count: int):
    """(first source index, span) of each image's window on one axis, and the largest span."""
    f64 = np.float64
    _, _, low, high = _bounds(in_size.astype(f64), out_size.astype(f64), start.astype(f64),
                              count, np)
    first = low[:, 0].astype(np.int64)
    span = (high[:, -1] - low[:, 0]).astype(np.int64)
    return first, span, int(span.max())


def axis_weights(in_size: torch.Tensor, out_size: torch.Tensor, start: torch.Tensor,
                 first: torch.Tensor, count: int, span: int) -> torch.Tensor:
    """(B, count, span) float32: output pixel o of image b = sum_j w[b, o, j] * source pixel
    first[b] + j. Triangle filter, normalized over the source pixels in range (PIL, aten)."""
    f64 = torch.float64
    center, support, low, high = _bounds(in_size.to(f64), out_size.to(f64), start.to(f64),
                                         count, torch)
    source = first.to(f64)[:, None, None] + torch.arange(span, dtype=f64,
                                                          device=first.device)
    x = (source - center[..., None] + 0.5) / support[:, None, None]
    weights = (1.0 - x.abs()).clamp(min=0.0)
    weights = weights * ((source >= low[..., None]) & (source < high[..., None]))
    return (weights / weights.sum(-1, keepdim=True)).float()


def resample_crops(images: list[torch.Tensor], crops: Crops) -> torch.Tensor:
    """(B, 3, size, size) float on 0-255: each (3, H, W) uint8 image resized to
    (resized_h, resized_w) with antialiased bilinear weights, cropped at (top, left), flipped
    where asked. Two batched matrix products on the images' device."""
    device, size, batch = images[0].device, crops.size, len(images)
    rows_first, rows_span, rows = windows(crops.height, crops.resized_h, crops.top, size)
    cols_first, cols_span, cols = windows(crops.width, crops.resized_w, crops.left, size)
    stack = torch.empty((batch, 3, rows, cols), dtype=torch.uint8, device=device)
    for i, image in enumerate(images):  # uint8: any leftover byte is finite, and weighted 0
        r0, c0, h, w = (int(v[i]) for v in (rows_first, cols_first, rows_span, cols_span))
        stack[i, :, :h, :w] = image[:, r0:r0 + h, c0:c0 + w]
    # the per-image numbers in one pinned copy: a pageable one would wait for the stream
    params = np.stack([crops.height, crops.resized_h, crops.top, rows_first, crops.width,
                       crops.resized_w, crops.left, cols_first,
                       np.zeros(batch, np.int64) if crops.flip is None else crops.flip])
    params = torch.from_numpy(params.astype(np.int64))
    if device.type == "cuda":
        params = params.pin_memory()
    params = params.to(device, non_blocking=True)
    wy = axis_weights(*params[0:4], count=size, span=rows)
    wx = axis_weights(*params[4:8], count=size, span=cols)
    if crops.flip is not None and crops.flip.any():
        wx = torch.where(params[8].bool()[:, None, None], wx.flip(1), wx)
    columns = torch.matmul(stack.float(), wx.transpose(1, 2)[:, None])  # (B, 3, rows, size)
    return torch.matmul(wy[:, None], columns)  # (B, 3, size, size)


def train_crops(sizes: list[tuple[int, int]], scales: list[int], crop: int,
                generator: torch.Generator, flip_p: float) -> Crops:
    """The paper's train geometry for a batch: shorter side -> scales[i], a uniformly placed
    crop x crop box (drawn from `generator`, on the host), a flip with probability flip_p."""
    height, width = (np.array(v, dtype=np.int64) for v in zip(*sizes))
    resized = [resized_size(h, w, s) for (h, w), s in zip(sizes, scales)]
    resized_h, resized_w = (np.array(v, dtype=np.int64) for v in zip(*resized))
    if (resized_h < crop).any() or (resized_w < crop).any():
        raise ValueError(f"a scale in {sorted(set(scales))} leaves an image smaller than the "
                         f"{crop}x{crop} crop")
    u = torch.rand(len(sizes), 3, generator=generator, dtype=torch.float64).numpy()
    top = np.floor(u[:, 0] * (resized_h - crop + 1)).astype(np.int64)
    left = np.floor(u[:, 1] * (resized_w - crop + 1)).astype(np.int64)
    flip = u[:, 2] < flip_p
    return Crops(height, width, resized_h, resized_w, top, left, crop, flip)


def center_crops(sizes: list[tuple[int, int]], resize: int, crop: int) -> Crops:
    """Shorter side -> resize, the centred crop x crop box (torchvision's center_crop)."""
    height, width = (np.array(v, dtype=np.int64) for v in zip(*sizes))
    resized = [resized_size(h, w, resize) for h, w in sizes]
    resized_h, resized_w = (np.array(v, dtype=np.int64) for v in zip(*resized))
    top = np.array([int(round((h - crop) / 2.0)) for h in resized_h], dtype=np.int64)
    left = np.array([int(round((w - crop) / 2.0)) for w in resized_w], dtype=np.int64)
    return Crops(height, width, resized_h, resized_w, top, left, crop)

