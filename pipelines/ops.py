"""Batched augmentation ops shared by every backend (native, and the FFCV/DALI adapters).

Images are (B, 3, H, W) tensors, uint8 on 0-255 or float on 0-255 (what decoders and resizers hand
out); random draws come from torch.Generators seeded by `batch_generators`, so an epoch's batches
are a pure function of (seed, epoch, rank, batch index) whatever the thread or resume point.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from pipelines.spec import AugSpec, DataConfig, dataset_stats

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several non-negative ints (seed, epoch, rank, batch...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0]
               >> np.uint64(1))


def make_generator(device, *parts: int) -> torch.Generator:
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(mix_seed(*parts))
    return generator


def batch_generators(device, seed: int, epoch: int, rank: int, batch: int):
    """(cpu_generator, device_generator) for one batch: geometry drawn on the host (sizes are
    Python ints), per-sample flips/lighting drawn where the images are."""
    cpu = make_generator("cpu", seed, epoch, rank, batch, 0)
    if torch.device(device).type == "cpu":
        return cpu, cpu
    return cpu, make_generator(device, seed, epoch, rank, batch, 1)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's shuffled order of n samples, identical on every rank."""
    return torch.randperm(n, generator=make_generator("cpu", seed, epoch, 0xE90C))


# ----------------------------------------------------------------------------- geometry
def random_flip(images: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Mirror each sample left-right with probability p (one mask, no per-sample Python)."""
    if p <= 0:
        return images
    mask = torch.rand(images.shape[0], device=images.device, generator=generator) < p
    return torch.where(mask.view(-1, *([1] * (images.dim() - 1))), images.flip(-1), images)


def crop_flip_indices(batch: int, size: tuple[int, int], pad: int, flip_p: float,
                      generator: torch.Generator, device):
    """Per-sample pixel rows (B, H) and columns (B, W) of a random size-crop out of images padded
    by `pad` on every side, columns reversed for the samples drawn to be mirrored."""
    h, w = size
    offsets = torch.randint(0, 2 * pad + 1, (batch, 2), device=device, generator=generator)
    rows = offsets[:, 0:1] + torch.arange(h, device=device)
    cols = offsets[:, 1:2] + torch.arange(w, device=device)
    if flip_p > 0:
        flip = torch.rand(batch, device=device, generator=generator) < flip_p
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    return rows, cols


def pixel_store(images: torch.Tensor, pad: int = 0) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, H + 2 pad, W + 2 pad, 3), zero-padded, contiguous."""
    if pad == 0:
        return images.contiguous()
    return torch.nn.functional.pad(images, (0, 0, pad, pad, pad, pad))


def _row_words(store: torch.Tensor) -> torch.Tensor:
    """A store's pixel rows as the widest words that divide them: (N, H', words). The index
    kernels copy one element at a time, so moving 8-byte words is several times faster."""
    n, h, w, c = store.shape
    rows = store.view(n, h, w * c)
    for dtype, size in ((torch.int64, 8), (torch.int32, 4)):
        if (w * c) % size == 0:
            return rows.view(dtype)
    return rows


def take(store: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """Whole images of a store -> (B, 3, H, W) uint8, a channels_last view."""
    n, h, w, c = store.shape
    images = _row_words(store).reshape(n, -1)[samples]
    return images.view(torch.uint8).view(-1, h, w, c).permute(0, 3, 1, 2)


def gather_crops(store: torch.Tensor, samples: torch.Tensor, rows: torch.Tensor,
                 cols: torch.Tensor) -> torch.Tensor:
    """Per-sample crops of a (N, H', W', C) uint8 store -> (B, C, H, W) channels_last view:
    whole pixel rows first (as words), then the columns byte by byte (reversed columns mirror)."""
    b, h, w = len(samples), rows.shape[1], cols.shape[1]
    channels = store.shape[3]
    strips = _row_words(store)[samples[:, None], rows].view(torch.uint8)  # (B, H, W' C)
    columns = (cols[:, :, None] * channels + torch.arange(channels, device=cols.device))
    crops = torch.gather(strips, 2, columns.view(b, 1, w * channels).expand(b, h, -1))
    return crops.view(b, h, w, channels).permute(0, 3, 1, 2)


def pad_random_crop(images: torch.Tensor, pad: int, generator: torch.Generator,
                    flip_p: float = 0.0) -> torch.Tensor:
    """CIFAR's zero-pad-then-random-crop of the original size on a (B, 3, H, W) uint8 batch, per
    sample, optionally with the random flip folded into the same gather."""
    b, _, h, w = images.shape
    store = pixel_store(images.permute(0, 2, 3, 1), pad)
    rows, cols = crop_flip_indices(b, (h, w), pad, flip_p, generator, images.device)
    return gather_crops(store, torch.arange(b, device=images.device), rows, cols)


def random_scale(generator: torch.Generator, low: int, high: int) -> int:
    """Shorter side ~ U{low..high} (inclusive)."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def resize_shorter(image: torch.Tensor, size: int) -> torch.Tensor:
    """Shorter side to `size`, aspect kept (torchvision's rule), antialiased bilinear."""
    return TF.resize(image, [size], antialias=True)


@contextlib.contextmanager
def single_thread_on_cpu(device):
    """torch on one thread inside the block when `device` is the CPU (a loader's host-side ops
    while its own threads decode), restored after."""
    if torch.device(device).type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def center_crop(image: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    return TF.center_crop(resize_shorter(image, resize), [crop, crop])


def ten_crop(image: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    """(..., 10, C, crop, crop): 4 corners + center of the shorter-side-`resize` image, then the
    same five of its mirror image (torchvision's order)."""
    return torch.stack(TF.ten_crop(resize_shorter(image, resize), [crop, crop]), dim=-4)


# ----------------------------------------------------------------------------- colour
@functools.lru_cache(maxsize=8)
def pca_basis(eigval: tuple, eigvec: tuple, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The lighting's eigenvalues and eigenvectors on `device`, made once: a tensor built from
    Python numbers on CUDA is a pageable copy, which waits for the stream's queued work."""
    return (torch.tensor(eigval, dtype=torch.float32, device=device),
            torch.tensor(eigvec, dtype=torch.float32, device=device))


def lighting_shift(batch: int, aug: AugSpec, generator: torch.Generator, device) -> torch.Tensor:
    """AlexNet PCA lighting: per-sample RGB shift (B, 3) on the 0-1 scale,
    eigvec @ (alpha * eigval) with alpha ~ N(0, lighting_std)."""
    eigval, eigvec = pca_basis(tuple(aug.eigval), tuple(map(tuple, aug.eigvec)), str(device))
    alpha = torch.randn(batch, 3, device=device, generator=generator) * aug.lighting_std
    return (alpha * eigval) @ eigvec.T


def load_mean_image(path: str | Path) -> torch.Tensor:
    """The paper's per-pixel mean: .npy H x W x 3 on the 0-1 scale -> (3, H, W) float32."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.aug.mean_image={str(path)!r}: no such file")
    array = np.load(path)
    if array.ndim != 3 or array.shape[2] != 3 or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"data.aug.mean_image={str(path)!r}: expected a float H x W x 3 array, "
                         f"got {array.dtype} {array.shape}")
    if array.min() < 0 or array.max() > 1:
        raise ValueError(f"data.aug.mean_image={str(path)!r}: values must be on the 0-1 scale, "
                         f"got [{array.min():.3g}, {array.max():.3g}]")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)


class Normalize:
    """uint8/float (0-255) images -> normalized float on the device, in the configured dtype and
    memory format, optionally with a per-sample lighting shift (on the 0-1 scale, added before
    normalisation). With aug.mean_image the per-pixel mean (resized to the images if needed)
    replaces the per-channel mean; the per-channel std still divides."""

    def __init__(self, data_cfg: DataConfig, device):
        mean, std = dataset_stats(data_cfg)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"data.aug.mean={mean}, data.aug.std={std}: need 3 values, std > 0")
        self.device = torch.device(device)
        self.dtype = DTYPES[data_cfg.dtype]
        self.channels_last = data_cfg.channels_last
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.scale = 1.0 / (255.0 * self.std)
        self.mean_image = None
        if data_cfg.aug.mean_image:
            self.mean_image = load_mean_image(data_cfg.aug.mean_image).to(self.device)[None]
        self._rows: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def _mean(self, height: int, width: int) -> torch.Tensor:
        if self.mean_image is None:
            return self.mean
        if self.mean_image.shape[-2:] != (height, width):
            return TF.resize(self.mean_image, [height, width], antialias=True)
        return self.mean_image

    def _pixel_rows(self, height: int, width: int):
        """scale and bias laid out like one channels_last image, flattened (H W 3,)."""
        if (height, width) not in self._rows:
            bias = (-self._mean(height, width) / self.std).expand(1, 3, height, width)
            scale = self.scale.expand(1, 3, height, width)
            self._rows[(height, width)] = tuple(t.permute(0, 2, 3, 1).reshape(-1)
                                                for t in (scale, bias))
        return self._rows[(height, width)]

    def __call__(self, images: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, 3, H, W) or (B, K, 3, H, W) on 0-255; shift (B, 3) on 0-1 or None."""
        images = images.to(self.device, non_blocking=True)
        flat = images.flatten(0, 1) if images.dim() == 5 else images
        if shift is not None and images.dim() == 5:
            shift = shift.repeat_interleave(images.shape[1], dim=0)
        n, _, h, w = flat.shape
        pixels = flat.permute(0, 2, 3, 1)
        if self.channels_last and pixels.is_contiguous():
            # Fast path: one channels_last image is one contiguous row of H*W*3 values, so
            # scale and bias are rows too and the arithmetic vectorizes.
            scale, bias = self._pixel_rows(h, w)
            out = pixels.reshape(n, -1).to(torch.float32, copy=True)
            torch.addcmul(bias, out, scale, out=out)
            if shift is not None:
                out.view(n, h * w, 3).add_((shift / self.std.view(1, 3)).view(n, 1, 3))
            out = out.view(n, h, w, 3).permute(0, 3, 1, 2)
        else:
            bias = -self._mean(h, w) / self.std
            if shift is not None:
                bias = bias + shift.view(-1, 3, 1, 1) / self.std
            out = torch.addcmul(bias, flat.float(), self.scale)
        out = to_dtype_and_layout(out, self.dtype, self.channels_last)
        return out.unflatten(0, images.shape[:2]) if images.dim() == 5 else out


def to_dtype_and_layout(images: torch.Tensor, dtype: torch.dtype,
                        channels_last: bool) -> torch.Tensor:
    """A (B, 3, H, W) batch, or each crop of a (B, K, 3, H, W) one (ten crops), cast to `dtype`
    and laid out channels_last or contiguous, as the training loop wants it."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    if images.dim() == 5:
        flat = images.flatten(0, 1).to(dtype=dtype, memory_format=layout)
        return flat.unflatten(0, images.shape[:2])
    return images.to(dtype=dtype, memory_format=layout)


def unnormalize(images: torch.Tensor, data_cfg: DataConfig) -> torch.Tensor:
    """Back to the 0-1 scale (per-channel statistics; for previews and tests)."""
    mean, std = dataset_stats(data_cfg)
    shape = (1,) * (images.dim() - 3) + (3, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(shape)
    mean_t = torch.tensor(mean, device=images.device).view(shape)
    return images.float() * std_t + mean_t
