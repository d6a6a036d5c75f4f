"""The synthetic backend: one fixed random batch on the device, handed out len() times.

The upper bound of end-to-end benchmarks (no reading, decoding or augmentation). len() is the real
split's batches per epoch (from the manifest when data.root has one, else the dataset's size).
"""
from __future__ import annotations

import torch

from pipelines import ops
from pipelines.plan import PlannedLoader
from pipelines.request import LoaderRequest
from pipelines.spec import DataConfig, class_names, num_classes
from records import datasets
from records import format as fmt


def build(request: LoaderRequest):
    return SyntheticLoader(request)


def split_size(cfg: DataConfig, split: str) -> int:
    """Samples of `split`: from the manifest at cfg.root, else from the full dataset's counts."""
    entry = datasets.get(cfg.dataset)
    source = entry.stored_split(split)
    try:
        count = fmt.split_count(fmt.read_manifest(cfg.root, cfg.dataset), source)
    except FileNotFoundError:
        if entry.counts is None:  # nothing to count without records
            raise
        count = entry.counts[source]
    return entry.split_count(split, count, cfg.val_size)


def image_shape(request: LoaderRequest) -> tuple[int, ...]:
    if not request.imagenet_style:
        return (3, *request.dataset.image_size)
    crop, scale = request.aug.crop, request.scale
    if request.eval_mode == "tencrop":
        return (10, 3, crop, crop)
    if request.eval_mode == "multiscale":
        return (3, scale, scale * 4 // 3)  # a typical 4:3 landscape photo
    return (3, crop, crop)


class SyntheticLoader(PlannedLoader):
    def __init__(self, request: LoaderRequest):
        super().__init__(request, split_size(request.data, request.split))
        batch = request.batch_size
        generator = ops.make_generator("cpu", request.seed, request.rank, 0x5717)
        images = torch.randn(batch, *image_shape(request), generator=generator)
        names = class_names(request.data)  # the records' (an ImageNet subset has fewer than 1000)
        classes = len(names) if names else num_classes(request.data)
        labels = torch.randint(classes, (batch,), generator=generator)
        self.images = ops.to_dtype_and_layout(images.to(self.device), request.dtype,
                                              request.data.channels_last)
        self.labels = labels.to(self.device)

    def __iter__(self):
        for _ in self.plan.batches():
            yield self.images, self.labels
