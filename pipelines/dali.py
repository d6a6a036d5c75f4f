"""The DALI backend: one DALI pipeline per pass, adapted to the respipe batch contract.

ImageNet: fn.readers.webdataset over the shards (.idx indexes) -> fn.decoders.image ("mixed" on a
GPU) -> fn.resize to shorter side S (torchvision's size rule, see resize_shorter) ->
fn.crop_mirror_normalize, with the PCA lighting folded into a per-sample mean
(mean - 255 * eigvec @ (alpha * eigval)). Eval crops sit where torchvision's center_crop and
ten_crop put them (see eval_crops), so all backends evaluate the same pixels.
CIFAR: fn.external_source feeds the batches of plan.EpochPlan from the .npy arrays; the
pad-and-crop is one fn.slice with out-of-bounds padding, flip and normalize one
crop_mirror_normalize. data.cache=stream reads the shards with plain file I/O instead of mmap
(whose mapped pages count in the process and grow with the shards read); the reader streams
each shard in order and shuffles in its buffer either way.

Labels: the .cls members are read and checked once when a loader is built (check_labels: a
class index in range, the manifest's per-class counts), as the other backends check theirs.

Determinism: every pass (`iter(loader)`) builds a fresh pipeline seeded from (seed, epoch, rank),
so a pass is a function of (seed, epoch, rank, start) whatever happened before. Train shards
stick to `(rank + epoch) % world_size` (DALI's own rotation, made explicit); the reader shuffles
within a buffer of `initial_fill` samples (fn.readers.webdataset has no global shuffle, so the
converter's sample order matters). Every rank stops after the same number of batches (the
smallest shard's). Resuming with `start` > 0: CIFAR skips exactly; the webdataset reader cannot
seek, so the first `start` batches are decoded and dropped. Eval keeps every sample: the readers
pad their last batch and the iterator trims it (LastBatchPolicy.PARTIAL).
"""
from __future__ import annotations

import numpy as np
import torch
from nvidia.dali import fn, math, pipeline_def, types
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from pipelines import ops
from pipelines.plan import STREAM_WINDOW, EpochPlan, PlannedLoader
from pipelines.readers import ShardReader, checker, cifar_split, sample_table
from pipelines.request import LoaderRequest
from pipelines.spec import DataConfig, dataset_stats
from records import format as fmt

SHUFFLE_BUFFER = STREAM_WINDOW  # samples in the webdataset reader's shuffle buffer (JPEGs)


def build(request: LoaderRequest):
    return ImageNetLoader(request) if request.imagenet_style else CifarLoader(request)


def device_id(device: torch.device) -> int | None:
    """DALI's device_id: the CUDA device's index, None for an all-CPU pipeline."""
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


def _normalize_args(cfg: DataConfig, shift=None):
    """crop_mirror_normalize's (mean, std) on the 0-255 scale, the lighting shift (0-1 scale)
    added by lowering the mean. With aug.mean_image, DALI only adds the shift and
    ops.Normalize subtracts the per-pixel mean afterwards."""

    if cfg.aug.mean_image:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    else:
        mean, std = (tuple(255.0 * v for v in stat) for stat in dataset_stats(cfg))
    if shift is None:
        return list(mean), list(std)
    return types.Constant(np.float32(mean)) - 255.0 * shift, list(std)


def lighting_shift(aug):
    """Per-sample (3,) RGB shift on the 0-1 scale: eigvec @ (alpha * eigval), alpha ~ N(0, std)."""

    alpha = fn.random.normal(shape=[3], stddev=aug.lighting_std)
    weighted = types.Constant(np.float32(aug.eigvec)) * (alpha * types.Constant(
        np.float32(aug.eigval)))
    return fn.reductions.sum(weighted, axes=[1])


def resize_shorter(images, jpegs, size):
    """fn.resize to shorter side `size` (int or DataNode) with torchvision's rule for the longer
    side (floor; DALI's resize_shorter rounds, which shifts content by up to half a pixel).
    Returns (images, height, width), the sizes as FLOAT64 DataNodes."""

    shape = fn.cast(fn.peek_image_shape(jpegs), dtype=types.FLOAT64)
    height, width = shape[0], shape[1]
    size = fn.cast(size, dtype=types.FLOAT64) if not isinstance(size, int) else float(size)
    portrait = fn.cast(width <= height, dtype=types.FLOAT64)
    longer = math.floor(size * math.max(height, width) / math.min(height, width))
    out_h = portrait * longer + (1.0 - portrait) * size
    out_w = portrait * size + (1.0 - portrait) * longer
    images = fn.resize(images, resize_y=fn.cast(out_h, dtype=types.FLOAT),
                       resize_x=fn.cast(out_w, dtype=types.FLOAT))
    return images, out_h, out_w


def eval_crops(height, width, crop: int, ten: bool):
    """[(top, left, mirror)] of torchvision's center crop (offsets rounded half to even, as
    Python's round) or of its ten_crop: 4 corners + center, then the same five of the mirror
    image (its top-left is the mirrored top-right, and so on)."""

    def half_to_even(free):
        half = math.floor(free / 2)
        return half + (free - 2 * math.floor(free / 2)) * (half - 2 * math.floor(half / 2))

    free_h, free_w = height - crop, width - crop
    top, left = half_to_even(free_h), half_to_even(free_w)
    if not ten:
        return [(top, left, 0)]
    return [(0.0, 0.0, 0), (0.0, free_w, 0), (free_h, 0.0, 0), (free_h, free_w, 0),
            (top, left, 0), (0.0, free_w, 1), (0.0, 0.0, 1), (free_h, free_w, 1),
            (free_h, 0.0, 1), (top, free_w - left, 1)]


def crop_position(offset, free):
    """crop_mirror_normalize's relative position for a whole-pixel offset (DALI rounds
    position * free to the nearest pixel, so the offset comes back exactly)."""

    if isinstance(offset, float) and offset == 0.0:
        return 0.0
    return fn.cast(offset / math.max(free, 1.0), dtype=types.FLOAT)


class _Loader(PlannedLoader):
    """A fresh DALI pipeline per pass; DALI's outputs turned into the contract's batches."""

    def __init__(self, request: LoaderRequest, samples: int):
        super().__init__(request, samples)
        self.device_id = device_id(self.device)
        self.threads = max(1, self.cfg.num_workers)
        self.mean_image = ops.Normalize(self.cfg, self.device) if self.aug.mean_image else None

    def _pipeline_seed(self, epoch: int) -> int:
        return ops.mix_seed(self.seed, epoch, self.rank) % (2 ** 31)

    def _iterator(self, pipe, outputs: list[str], reader: bool, train: bool):

        policy = LastBatchPolicy.DROP if train else LastBatchPolicy.PARTIAL
        extra = {"reader_name": "Reader"} if reader else {}
        return DALIGenericIterator([pipe], outputs, last_batch_policy=policy,
                                   prepare_first_batch=False, **extra)

    def _images(self, data: torch.Tensor) -> torch.Tensor:
        data = data.to(self.device, non_blocking=True)
        if self.mean_image is not None:
            return self.mean_image(data)
        return ops.to_dtype_and_layout(data, self.request.dtype, self.cfg.channels_last)


class ReaderPlan(EpochPlan):
    """The plan of fn.readers.webdataset, which shards a split itself: rank r reads samples
    [n * r // k, n * (r + 1) // k); in training every rank stops after the smallest share's
    full batches. Only len(), the epoch and the start batch are used."""

    def __len__(self) -> int:
        n, k = self.n, self.world_size
        shares = [n * (r + 1) // k - n * r // k for r in range(k)]
        if self.drop_last:
            return min(shares) // self.batch_size
        return -(-shares[self.rank] // self.batch_size)


def check_labels(table, request: LoaderRequest) -> None:
    """Every .cls member of the split a class index in range, with the manifest's per-class
    counts, before the pipeline reads any: DALI hands the reader's bytes on unchecked, and a
    label out of range would fail deep in the loss, or not at all. The other backends' checks:
    ShardReader._label (native, torchvision), the .beton's label column (FFCV)."""
    reader = ShardReader(table)
    try:
        labels = reader.labels()  # a RecordsError names the shard and the sample
    finally:
        reader.close()
    cfg = request.data
    checker(cfg, fmt.read_manifest(cfg.root, cfg.dataset)).labels(
        labels, f"{cfg.root}/{fmt.shard_folder_rel(request.stored_split)}", request.stored_split)


class ImageNetLoader(_Loader):
    plan_class = ReaderPlan

    def __init__(self, request: LoaderRequest):
        cfg = request.data
        table = sample_table(cfg, request.split)  # the shards, checked against the manifest
        check_labels(table, request)
        self.shards = list(table.shards)
        self.indexes = [fmt.shard_index_rel(p) for p in self.shards]  # checked with the shards
        super().__init__(request, len(table))

    def _pipeline(self):

        aug, train, gpu = self.aug, self.train, self.device_id is not None
        world_size, epoch = self.request.world_size, self.plan.epoch
        shard = (self.rank + epoch) % world_size if train else self.rank
        stream = self.request.cache.stream  # plain reads, not a map that grows with the shards

        @pipeline_def(batch_size=self.plan.batch_size, num_threads=self.threads,
                      device_id=self.device_id, seed=self._pipeline_seed(epoch))
        def pipe():
            jpegs, labels = fn.readers.webdataset(
                paths=self.shards, index_paths=self.indexes, ext=["jpg", "cls"],
                missing_component_behavior="error", shard_id=shard,
                num_shards=world_size, stick_to_shard=True, random_shuffle=train,
                initial_fill=SHUFFLE_BUFFER, pad_last_batch=not train, name="Reader",
                dont_use_mmap=stream)
            images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu",
                                       output_type=types.RGB,
                                       **({"hw_decoder_load": self.cfg.hw_decoder_load}
                                          if gpu else {}))
            labels = fn.pad(labels, fill_value=0)  # ASCII digits, zero-padded to one width
            if train:
                images, _, _ = resize_shorter(images, jpegs, fn.random.uniform(
                    values=list(range(aug.scale_min, aug.scale_max + 1))))
                shift = lighting_shift(aug) if aug.lighting_std > 0 else None
                mean, std = _normalize_args(self.cfg, shift)
                crop = fn.crop_mirror_normalize(
                    images, crop=(aug.crop, aug.crop), crop_pos_x=fn.random.uniform(range=(0, 1)),
                    crop_pos_y=fn.random.uniform(range=(0, 1)),
                    mirror=fn.random.coin_flip(probability=aug.flip_p), mean=mean, std=std,
                    dtype=types.FLOAT, output_layout="CHW")
                return crop, labels
            mean, std = _normalize_args(self.cfg)
            size = self.scale if self.eval_mode == "multiscale" else aug.eval_resize
            images, height, width = resize_shorter(images, jpegs, size)
            if self.eval_mode == "multiscale":
                whole = fn.crop_mirror_normalize(images, mean=mean, std=std, dtype=types.FLOAT,
                                                 output_layout="CHW")
                return whole, labels
            places = eval_crops(height, width, aug.crop, ten=self.eval_mode == "tencrop")
            crops = [fn.crop_mirror_normalize(
                images, crop=(aug.crop, aug.crop), mirror=mirror, mean=mean, std=std,
                crop_pos_y=crop_position(top, height - aug.crop),
                crop_pos_x=crop_position(left, width - aug.crop),
                dtype=types.FLOAT, output_layout="CHW") for top, left, mirror in places]
            return (*crops, labels)

        return pipe()

    def __iter__(self):
        start, self.plan.start = self.plan.start, 0
        if start >= len(self):
            return
        pipe = self._pipeline()
        pipe.build()
        n_images = 10 if self.eval_mode == "tencrop" else 1
        names = [f"image{i}" for i in range(n_images)] + ["label"]
        iterator = self._iterator(pipe, names, reader=True, train=self.train)
        try:
            for number, (outputs,) in enumerate(iterator):
                if number >= len(self):
                    break
                if number < start:
                    continue
                images = [outputs[name] for name in names[:-1]]
                images = torch.stack(images, 1) if n_images > 1 else images[0]
                yield self._images(images), self._labels(outputs["label"])
        finally:
            del iterator, pipe

    def _labels(self, ascii_digits: torch.Tensor) -> torch.Tensor:
        """(B, L) zero-padded ASCII of the .cls members -> int64 (B,) on the device."""
        codes = ascii_digits.cpu().long()
        digit = (codes >= 48) & (codes <= 57)
        blank = (codes == 0) | (codes == 9) | (codes == 10) | (codes == 13) | (codes == 32)
        bad = ~((digit | blank).all(1) & digit.any(1))
        if bool(bad.any()):
            row = codes[int(bad.nonzero()[0, 0])]
            raise ValueError(f"{self.cfg.root}/{fmt.shard_folder_rel(self.request.split)}: a .cls "
                             f"member is not a class "
                             f"index: {bytes(row[row > 0].tolist())!r}")
        value = torch.zeros(len(codes), dtype=torch.int64)
        for column in codes.T:
            value = torch.where(column >= 48, value * 10 + column - 48, value)
        return value.to(self.device, non_blocking=True)


class CifarLoader(_Loader):
    def __init__(self, request: LoaderRequest):
        self.images, self.labels = cifar_split(request.data, request.split)
        super().__init__(request, len(self.labels))

    def _pipeline(self, source):

        aug, gpu = self.aug, self.device_id is not None

        @pipeline_def(batch_size=self.plan.batch_size, num_threads=self.threads,
                      device_id=self.device_id, seed=self._pipeline_seed(self.plan.epoch))
        def pipe():
            images, labels = fn.external_source(source=source, num_outputs=2, batch=True,
                                                layout=["HWC", ""], cycle="raise",
                                                dtype=[types.UINT8, types.INT64])
            if gpu:
                images = images.gpu()
            mean, std = _normalize_args(self.cfg)
            if not self.train:
                return fn.crop_mirror_normalize(images, mean=mean, std=std, dtype=types.FLOAT,
                                                output_layout="CHW"), labels
            if aug.pad > 0:
                anchor = fn.random.uniform(values=list(range(-aug.pad, aug.pad + 1)), shape=[2],
                                           dtype=types.INT32)
                images = fn.slice(images, start=anchor, shape=list(self.images.shape[1:3]),
                                  axis_names="HW", out_of_bounds_policy="pad", fill_values=0)
            images = fn.crop_mirror_normalize(
                images, mirror=fn.random.coin_flip(probability=aug.flip_p), mean=mean, std=std,
                dtype=types.FLOAT, output_layout="CHW")
            return images, labels

        return pipe()

    def __iter__(self):
        batches = [positions for _, positions in self.plan.batches()]
        if not batches:
            return

        def source():
            for positions in batches:
                yield self.images[positions], self.labels[positions]

        pipe = self._pipeline(source)
        pipe.build()
        iterator = self._iterator(pipe, ["image", "label"], reader=False, train=self.train)
        try:
            for (outputs,) in iterator:
                labels = outputs["label"].reshape(-1).to(self.device, non_blocking=True)
                yield self._images(outputs["image"]), labels
        finally:
            del iterator, pipe
