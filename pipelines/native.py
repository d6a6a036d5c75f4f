"""The native backend: plain torch/torchvision, batched on the device.

CIFAR: the whole uint8 split lives on the device; one epoch is a permutation, and each batch is one
gather (random crop of the zero-padded store with the flip folded in) plus one fused normalize.
ImageNet: webdataset shards read with pread by a small thread pool that runs ahead; JPEGs are
decoded by torchvision (in batches on the GPU when the device is CUDA), resized per image (sizes
differ), then flip, PCA lighting and normalisation run on the whole batch.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from pipelines import ops
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


class ImageNetLoader(PlannedLoader):
    def __init__(self, request: LoaderRequest):
        self.reader = ShardReader(sample_table(request.data, request.split))
        super().__init__(request, len(self.reader))
        self.normalize = ops.Normalize(self.cfg, self.device)
        self.workers = max(self.cfg.num_workers, 0)

    # The CPU part of a batch (threads): bytes, and on a CPU device the whole batch.
    def _read(self, epoch: int, number: int, positions: np.ndarray):
        blobs, labels = zip(*(self.reader.read(int(i)) for i in positions))
        data = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]
        labels = torch.tensor(labels, dtype=torch.int64)
        if self.device.type == "cpu":
            return self._augment(epoch, number, data, labels)
        return epoch, number, data, labels.pin_memory() if torch.cuda.is_available() else labels

    def _augment(self, epoch: int, number: int, data: list[torch.Tensor], labels: torch.Tensor):
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        cpu_gen, dev_gen = ops.batch_generators(self.device, self.seed, epoch, self.rank, number)
        aug, shift = self.aug, None
        if self.train:
            batch = torch.stack([
                ops.scale_and_crop(image, ops.random_scale(cpu_gen, aug.scale_min,
                                                           aug.scale_max), aug.crop, cpu_gen)
                for image in images])
            batch = ops.random_flip(batch, aug.flip_p, dev_gen)
            if aug.lighting_std > 0:
                shift = ops.lighting_shift(len(batch), aug, dev_gen, self.device)
        elif self.eval_mode == "center":
            batch = torch.stack([ops.center_crop(im, aug.eval_resize, aug.crop) for im in images])
        elif self.eval_mode == "tencrop":
            batch = torch.stack([ops.ten_crop(im, aug.eval_resize, aug.crop) for im in images])
        else:  # multiscale, one image per batch
            batch = ops.resize_shorter(images[0], self.scale)[None]
        return self.normalize(batch, shift), labels.to(self.device, non_blocking=True)

    def __iter__(self):
        epoch = self.plan.epoch
        calls = (partial(self._read, epoch, number, positions)
                 for number, positions in self.plan.batches())
        for item in run_ahead(calls, self.workers):
            yield self._finish(item)

    def _finish(self, item):
        if self.device.type == "cpu":
            return item
        return self._augment(*item)
