"""The native backend: plain torch/torchvision, batched on the device.

CIFAR: the whole uint8 split lives on the device; one epoch is a permutation, and each batch is one
gather (random crop of the zero-padded store with the flip folded in) plus one fused normalize.
ImageNet: a small thread pool runs whole batches ahead: webdataset shards read with pread, JPEGs
decoded by torchvision (on CUDA nvJPEG batches on each thread's own stream plus a share on the
CPU: pipelines/decode.py says why), crops resampled (one batched resample on CUDA:
pipelines/resample.py), then PCA lighting and normalisation on the whole batch.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import torch

from pipelines import decode, ops, resample
from pipelines.plan import PlannedLoader
from pipelines.readers import ShardReader, cifar_split, sample_table
from pipelines.request import LoaderRequest


def build(request: LoaderRequest):
    return ImageNetLoader(request) if request.imagenet_style else CifarLoader(request)


def _one_thread() -> None:
    # OpenMP thread counts are per calling thread: workers run their ops single-threaded
    # (parallel across batches instead), which also keeps them from stalling on a busy machine.
    torch.set_num_threads(1)


def run_ahead(calls, workers: int):
    """Results of `calls` (an iterator of zero-argument callables) in order, computed by
    `workers` threads up to workers + 1 batches ahead; inline when workers == 0."""
    if workers == 0:
        for call in calls:
            yield call()
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="respipe-native",
                            initializer=_one_thread) as pool:
        pending = deque()
        try:
            for call in calls:
                pending.append(pool.submit(call))
                if len(pending) > workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


class CifarLoader(PlannedLoader):
    def __init__(self, request: LoaderRequest):
        images, labels = cifar_split(request.data, request.split)
        super().__init__(request, len(labels))
        self.pad = self.aug.pad if self.train else 0
        self.size = images.shape[1:3]
        self.store = ops.pixel_store(torch.from_numpy(images).to(self.device), self.pad)  # NHWC
        self.labels = torch.from_numpy(labels).to(self.device)
        self.normalize = ops.Normalize(self.cfg, self.device)

    def __iter__(self):
        epoch = self.plan.epoch
        order = torch.from_numpy(self.plan.indices()).to(self.device)
        calls = (partial(self._batch, epoch, number, order) for number, _ in self.plan.batches())
        # On CUDA the kernels are asynchronous already; on the CPU, threads work ahead.
        workers = self.cfg.num_workers if self.device.type == "cpu" else 0
        yield from run_ahead(calls, max(workers, 0))

    def _batch(self, epoch: int, number: int, order: torch.Tensor):
        size = self.plan.batch_size
        samples = order[number * size:(number + 1) * size]
        if self.train:
            _, generator = ops.batch_generators(self.device, self.seed, epoch, self.rank, number)
            rows, cols = ops.crop_flip_indices(len(samples), self.size, self.pad,
                                               self.cfg.aug.flip_p, generator, self.device)
            images = ops.gather_crops(self.store, samples, rows, cols)
        else:
            images = ops.take(self.store, samples)
        return self.normalize(images), self.labels[samples]


def batched_geometry(device: torch.device) -> bool:
    """Train and center crops as one batched resample (pipelines/resample.py) on CUDA, where a
    resize per image costs kernel launches per image; per image on the CPU, where torchvision's
    uint8 resize is faster. Both are resize-then-crop with the same draws (tests run both)."""
    return device.type == "cuda"


class ImageNetLoader(PlannedLoader):
    def __init__(self, request: LoaderRequest):
        table = sample_table(request.data, request.split)
        self.reader = ShardReader(table, stream=request.cache.stream)
        super().__init__(request, len(table), blocks=table.shard)
        self.normalize = ops.Normalize(self.cfg, self.device)
        self.workers = max(self.cfg.num_workers, 0)
        self.batched = batched_geometry(self.device)
        # CUDA: a stream per loader thread; hw_decoder_load of each batch on nvJPEG
        self.order = decode.ordering(self.device, self.cfg.hw_decoder_load)

    def _batch(self, epoch: int, number: int, positions: np.ndarray):
        """One whole batch, in a loader thread: read, decode, augment, normalize; on CUDA on
        the thread's own stream, with an event that says when it is ready."""
        data, labels = self.read(positions)
        images = self.order.decode(data)
        with self.order.context():
            batch, labels = self._augment(epoch, number, images, labels)
            return batch, labels, self.order.done()

    def read(self, positions: np.ndarray) -> tuple[list[torch.Tensor], torch.Tensor]:
        """A batch's JPEG bytes (uint8 tensors, as the decoder takes them) and its labels."""
        blobs, labels = zip(*(self.reader.read(int(i)) for i in positions))
        data = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]
        return data, torch.tensor(labels, dtype=torch.int64)

    def _augment(self, epoch: int, number: int, images: list[torch.Tensor],
                 labels: torch.Tensor):
        cpu_gen, dev_gen = ops.batch_generators(self.device, self.seed, epoch, self.rank, number)
        aug, shift = self.aug, None
        sizes = [tuple(image.shape[-2:]) for image in images]
        if self.train:
            scales = [ops.random_scale(cpu_gen, aug.scale_min, aug.scale_max) for _ in images]
            crops = resample.train_crops(sizes, scales, aug.crop, cpu_gen, aug.flip_p)
            batch = (resample.resample_crops(images, crops) if self.batched
                     else torch.stack([_cut(image, scale, crops, i)
                                       for i, (image, scale) in enumerate(zip(images, scales))]))
            if aug.lighting_std > 0:
                shift = ops.lighting_shift(len(batch), aug, dev_gen, self.device)
        elif self.eval_mode == "center":
            batch = (resample.resample_crops(images, resample.center_crops(
                sizes, aug.eval_resize, aug.crop)) if self.batched
                else torch.stack([ops.center_crop(im, aug.eval_resize, aug.crop) for im in images]))
        elif self.eval_mode == "tencrop":
            batch = torch.stack([ops.ten_crop(im, aug.eval_resize, aug.crop) for im in images])
        else:  # multiscale, one image per batch
            batch = ops.resize_shorter(images[0], self.scale)[None]
        labels = labels.pin_memory() if self.device.type == "cuda" else labels
        return self.normalize(batch, shift), labels.to(self.device, non_blocking=True)

    def __iter__(self):
        epoch = self.plan.epoch
        calls = (partial(self._batch, epoch, number, positions)
                 for number, positions in self.plan.batches())
        for batch, labels, done in run_ahead(calls, self.workers):
            yield self.order.hand_over((batch, labels), done)


def _cut(image: torch.Tensor, scale: int, crops: resample.Crops, i: int) -> torch.Tensor:
    """Crop i of a batch, per image: resize the whole image, then cut (and mirror)."""
    top, left, size = int(crops.top[i]), int(crops.left[i]), crops.size
    crop = ops.resize_shorter(image, scale)[..., top:top + size, left:left + size]
    return crop.flip(-1) if crops.flip[i] else crop
