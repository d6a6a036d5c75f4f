"""The FFCV backend: .beton files read by ffcv.loader.Loader, augmentation finished on the device.

FFCV's numba threads decode (and, for ImageNet train, crop and resize); the shared batched ops
of pipelines/ops.py do the rest where the images are, so all backends share one augmentation:
- ImageNet train: `ScaleCropDecoder` crops a random c x c box, c = round(crop * shorter side / S)
  with S ~ U{scale_min..scale_max}, resized to crop x crop (OpenCV INTER_AREA): "shorter side to
  S, random crop" up to interpolation. Then flip, PCA lighting and normalize (ops).
- ImageNet eval: `WholeImageDecoder` decodes each image whole into a flat buffer as big as the
  largest image (FFCV batches have one shape); center crop, ten crops and multiscale then run
  ops.center_crop / ops.ten_crop / ops.resize_shorter per image on the device, the resampler
  every backend's eval shares. (FFCV's INTER_AREA resize, tried first, differs from torchvision's
  antialiased resize by a mean of 1.9 levels, 99.9th percentile 27, on a photo downscaled 2x.)
  Batches are capped to keep the buffers under DECODE_BUDGET; multiscale yields one image per
  batch (aspect ratios vary).
- CIFAR: raw pixels (SimpleRGBImageDecoder), then ops.pad_random_crop with the flip folded in.

Order and sharding come from plan.EpochPlan (deterministic in (seed, epoch), disjoint equal
train shards): each pass hands the Loader that epoch's sample ids as its SEQUENTIAL `indices`.
data.cache=stream reads as ffcv-imagenet does for data larger than RAM: os_cache=False (FFCV's own
page buffers, sized by the pages a few batches touch) with a page-local order; FFCV's QUASI_RANDOM
is not available distributed, so the plan computes the same kind of order over the samples'
pages (plan.windowed_order), identical on every rank and resumable.
Flip and lighting draw from ops.batch_generators; the train crop reseeds numba's generator per
sample from (seed, epoch, sample id). So a pass is a function of (seed, epoch, rank, start).
"""
from __future__ import annotations

import ctypes
import importlib.metadata
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

_threads = torch.get_num_threads()
import ffcv  # noqa: E402,F401  (importing ffcv sets torch to 1 thread: restored below)
from ffcv.fields.basics import IntDecoder  # noqa: E402
from ffcv.fields.rgb_image import (  # noqa: E402
    IMAGE_MODES,
    ResizedCropRGBImageDecoder,
    SimpleRGBImageDecoder,
)
from ffcv.libffcv import imdecode, memcpy, resize_crop  # noqa: E402
from ffcv.loader import Loader, OrderOption  # noqa: E402
from ffcv.pipeline.allocation_query import AllocationQuery  # noqa: E402
from ffcv.pipeline.compiler import Compiler  # noqa: E402
from ffcv.reader import Reader  # noqa: E402
from ffcv.transforms import ToDevice, ToTensor, ToTorchImage  # noqa: E402

from pipelines import ops  # noqa: E402
from pipelines.plan import PlannedLoader  # noqa: E402
from pipelines.readers import checker, open_records, split_positions  # noqa: E402
from pipelines.request import LoaderRequest  # noqa: E402
from records import format as fmt  # noqa: E402

torch.set_num_threads(_threads)

# This module reaches into FFCV internals (decoder code generation, Loader.traversal_order):
# written against this version, refused with any other rather than misbehaving.
FFCV_VERSION = "1.0.2"
_found = importlib.metadata.version("ffcv")  # ffcv.__version__ says 0.0.3rc1 in 1.0.2
if _found != FFCV_VERSION:
    raise ImportError(f"pipelines/ffcv.py was written against ffcv {FFCV_VERSION} internals "
                      f"(decoder generate_code, Loader.traversal_order.indices); found ffcv "
                      f"{_found}: install ffcv=={FFCV_VERSION} (make install)")

JPG = IMAGE_MODES["jpg"]
DECODE_BUDGET = 256 << 20  # bytes of eval decode buffers per batch (whole images of any size)


def build(request: LoaderRequest):
    return FFCVLoader(request)


# ----------------------------------------------------------------------------- decoders
# The functions below are compiled by numba inside FFCV's generated code.
def scale_crop_box(height, width, scale, crop):
    """(top, left, c, c) of a random c x c box, c = crop * shorter / S, S ~ U{scale[0]..
    scale[1]}: resizing the box to crop x crop = shorter side to S, then a random crop."""
    s = np.random.randint(scale[0], scale[1] + 1)
    shorter = min(height, width)
    c = min(shorter, max(1, int(round(crop * shorter / s))))
    top = np.random.randint(0, height - c + 1)
    left = np.random.randint(0, width - c + 1)
    return top, left, c, c


_libc_memcpy = ctypes.CDLL(None).memcpy  # (destination pointer, source address, bytes)
_libc_memcpy.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64]


def read_u64(address):
    """The uint64 at `address`: how compiled code sees a value Python changes later (numba
    freezes the arrays a function closes over)."""
    out = np.zeros(1, dtype=np.uint64)
    _libc_memcpy(out.ctypes.data, address, 8)
    return out[0]


class ScaleCropDecoder(ResizedCropRGBImageDecoder):
    """Train: shorter side S ~ U{scale_min..scale_max}, random crop x crop. FFCV's own
    decoders draw from numba's unseeded per-thread generators; this one reseeds them per
    sample from (epoch_seed, sample id), so crops do not depend on threads or resume."""

    def __init__(self, crop: int, scale_min: int, scale_max: int):
        super().__init__((crop, crop))
        self.scale, self.ratio = (scale_min, scale_max), float(crop)
        self.epoch_seed = np.zeros(1, dtype=np.uint64)  # set before every pass

    @property
    def get_crop_generator(self):
        return scale_crop_box

    def generate_code(self):
        mem_read, my_range = self.memory_read, Compiler.get_iterator()
        imdecode_c, resize_crop_c = Compiler.compile(imdecode), Compiler.compile(resize_crop)
        crop_box_c, read_c = Compiler.compile(scale_crop_box), Compiler.compile(read_u64)
        scale, crop = np.array(self.scale), self.ratio
        seed_address = self.epoch_seed.ctypes.data

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            epoch_seed = read_c(seed_address)
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                np.random.seed(np.uint32((epoch_seed + np.uint64(source_ix)
                                          * np.uint64(2654435761)) % np.uint64(1 << 32)))
                field = metadata[source_ix]
                data = mem_read(field["data_ptr"], storage_state)
                height, width = np.uint32(field["height"]), np.uint32(field["width"])
                if field["mode"] == JPG:
                    image = temp_storage[dst_ix]
                    imdecode_c(data, image, height, width, height, width, 0, 0, 1, 1,
                               False, False)
                    image = image[:3 * height * width].reshape(height, width, 3)
                else:
                    image = data.reshape(height, width, 3)
                top, left, h, w = crop_box_c(height, width, scale, crop)
                resize_crop_c(image, top, top + h, left, left + w, destination[dst_ix])
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode


class WholeImageDecoder(SimpleRGBImageDecoder):
    """Eval: each image decoded whole into the front of a flat uint8 buffer as big as the
    largest image (FFCV batches have one shape); the loader views it by the metadata."""

    def declare_state_and_memory(self, previous_state):
        size = 3 * int(self.metadata["height"].max()) * int(self.metadata["width"].max())
        dtype = np.dtype("<u1")
        return (replace(previous_state, jit_mode=True, shape=(size,), dtype=dtype),
                AllocationQuery((size,), dtype))

    def generate_code(self):
        mem_read, my_range = self.memory_read, Compiler.get_iterator()
        imdecode_c, memcpy_c = Compiler.compile(imdecode), Compiler.compile(memcpy)

        def decode(batch_indices, destination, metadata, storage_state):
            for dst_ix in my_range(len(batch_indices)):
                field = metadata[batch_indices[dst_ix]]
                data = mem_read(field["data_ptr"], storage_state)
                height, width = field["height"], field["width"]
                if field["mode"] == JPG:
                    imdecode_c(data, destination[dst_ix], height, width, height, width,
                               0, 0, 1, 1, False, False)
                else:
                    memcpy_c(data, destination[dst_ix][:data.size])
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode


# ----------------------------------------------------------------------------- loader
def _beton(request: LoaderRequest) -> tuple[Path, int]:
    """(path, sample count) of the .beton that the request's split reads, checked against the
    manifest (records/check.py: its size, sampled digest and sample count)."""
    cfg, source = request.data, request.stored_split
    manifest = open_records(cfg, "ffcv", source)
    return Path(cfg.root) / fmt.beton_rel(source), fmt.split_count(manifest, source)


def sample_pages(reader: Reader) -> np.ndarray:
    """The first page of each sample's data: the storage blocks of the stream order."""
    table = reader.alloc_table
    pages = np.full(reader.num_samples, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(pages, table["sample_id"].astype(np.int64),
                  (table["ptr"] // np.uint64(reader.page_size)).astype(np.int64))
    return pages


def set_order(loader: Loader, order: np.ndarray) -> None:
    """The sample ids of the next pass, in order: FFCV 1.0.2's SEQUENTIAL traversal reads its
    `indices` at every epoch, so one Loader (and its compiled pipeline) serves every pass."""
    loader.traversal_order.indices = order


class FFCVLoader(PlannedLoader):
    def __init__(self, request: LoaderRequest):
        # FFCV sets torch's thread count per Loader and per epoch: keep the caller's.
        self.torch_threads = torch.get_num_threads()
        cfg, device = request.data, request.device
        self.imagenet = request.imagenet_style
        self.per_image = request.eval_mode == "multiscale"
        path, count = _beton(request)
        reader = Reader(str(path))
        if sorted(reader.field_names) != ["image", "label"]:
            raise ValueError(f"{path}: fields {reader.field_names}, expected image and label")
        checker(cfg, fmt.read_manifest(cfg.root)).labels(
            reader.metadata[f"f{reader.field_names.index('label')}"], path, request.stored_split)
        meta = reader.metadata[f"f{reader.field_names.index('image')}"]
        heights, widths = meta["height"].astype(np.int64), meta["width"].astype(np.int64)

        # FFCV's read batch: multi-scale reads eval batches and yields their images one by one.
        batch = cfg.eval_batch_size if self.per_image else request.batch_size
        self.decoder = SimpleRGBImageDecoder()
        if self.imagenet and request.train:
            aug = request.aug
            self.decoder = ScaleCropDecoder(aug.crop, aug.scale_min, aug.scale_max)
        elif self.imagenet:
            self.decoder = WholeImageDecoder()
            self.sizes = np.stack([heights, widths], axis=1)
            batch = max(1, min(batch, DECODE_BUDGET // int(3 * heights.max() * widths.max())))
        # The split's sample ids (CIFAR: the train/val hold-out); the rank's plan over them.
        self.ids = split_positions(cfg, request.split, stored_count=count)
        super().__init__(request, len(self.ids), batch_size=1 if self.per_image else batch,
                         blocks=sample_pages(reader)[self.ids] if request.cache.stream else None)

        image_ops = [self.decoder, ToTensor()]
        if not isinstance(self.decoder, WholeImageDecoder):  # whole images: viewed on the host
            if device.type == "cuda":
                image_ops.append(ToDevice(device, non_blocking=True))
            image_ops.append(ToTorchImage(channels_last=True))
        self.loader = Loader(
            str(path), batch_size=batch, num_workers=max(1, cfg.num_workers),
            order=OrderOption.SEQUENTIAL, indices=self.ids, drop_last=self.train,
            os_cache=not request.cache.stream,
            pipelines={"image": image_ops, "label": [IntDecoder(), ToTensor()]})
        torch.set_num_threads(self.torch_threads)
        self.normalize = ops.Normalize(cfg, device)

    def __iter__(self):
        planned = list(self.plan.batches())
        if not planned:
            return
        order = self.ids[np.concatenate([positions for _, positions in planned])]
        set_order(self.loader, order)
        if isinstance(self.decoder, ScaleCropDecoder):
            self.decoder.epoch_seed[0] = ops.mix_seed(self.seed, self.plan.epoch) >> 32
        batches, offset = iter(self.loader), 0
        try:
            for step, (images, labels) in enumerate(batches):
                if step == 0:
                    torch.set_num_threads(self.torch_threads)  # FFCV's thread has set them
                ids = order[offset:offset + len(labels)]
                offset += len(labels)
                labels = labels.reshape(-1).to(self.device, copy=True)  # FFCV reuses buffers
                if self.per_image:  # multiscale: one whole image per batch
                    for i, sample in enumerate(ids):
                        image = ops.resize_shorter(self._whole(images[i], sample), self.scale)
                        yield self.normalize(image[None]), labels[i:i + 1]
                elif self.imagenet and not self.train:
                    yield self._eval(images, ids), labels
                else:
                    yield self._augment(images, planned[step][0]), labels
        finally:
            batches.close()  # an abandoned pass stops FFCV's thread too

    def _whole(self, buffer: torch.Tensor, sample: int) -> torch.Tensor:
        """(3, h, w) on the device from a WholeImageDecoder output."""
        height, width = (int(v) for v in self.sizes[sample])
        image = buffer[:3 * height * width].view(height, width, 3).permute(2, 0, 1)
        return image.to(self.device, non_blocking=True)

    def _eval(self, images: torch.Tensor, ids: np.ndarray) -> torch.Tensor:
        """The eval protocol with the ops every backend shares (torchvision's resize).

        On CPU these small per-image ops run on one torch thread: FFCV's threads are decoding
        the next batch meanwhile, and torch's thread pool fighting them for the cores made
        the ops 6x slower (ImageNet val ran at 0.6x the torchvision DataLoader, 2 cores)."""
        aug = self.aug
        cut = {"center": ops.center_crop, "tencrop": ops.ten_crop}[self.eval_mode]
        with ops.single_thread_on_cpu(self.device):
            return self.normalize(torch.stack([
                cut(self._whole(images[i], sample), aug.eval_resize, aug.crop)
                for i, sample in enumerate(ids)]))

    def _augment(self, images: torch.Tensor, number: int) -> torch.Tensor:
        if not self.train:
            return self.normalize(images)
        aug, shift = self.aug, None
        _, generator = ops.batch_generators(self.device, self.seed, self.plan.epoch, self.rank,
                                            number)
        if self.imagenet:
            images = ops.random_flip(images, aug.flip_p, generator)
            if aug.lighting_std > 0:
                shift = ops.lighting_shift(len(images), aug, generator, self.device)
        else:
            images = ops.pad_random_crop(images, aug.pad, generator, aug.flip_p)
        return self.normalize(images, shift)
