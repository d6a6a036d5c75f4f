"""The torchvision baseline: what users write today, for comparison in tests and benchmarks.

torch.utils.data.DataLoader workers decode with PIL and run torchvision.transforms.v2 per sample
(the same recipe as the other backends); batches are moved to the device and laid out at the end.
Order and sharding come from plan.EpochPlan, and each sample's transform is seeded from
(seed, epoch, position), so set_epoch is deterministic whatever the number of workers.
"""
from __future__ import annotations

import io

import numpy as np
import torch
import torch.utils.data
import torchvision.transforms.v2 as T
from PIL import Image

from pipelines import ops
from pipelines.plan import EpochPlan, PlannedLoader
from pipelines.readers import ShardReader, cifar_split, sample_table
from pipelines.request import LoaderRequest
from pipelines.spec import AugSpec, dataset_stats


def build(request: LoaderRequest):
    return BaselineLoader(request)


class Lighting(torch.nn.Module):
    """AlexNet PCA lighting on a float 0-1 image tensor (no torchvision transform does it)."""

    def __init__(self, aug: AugSpec):
        super().__init__()
        self.std = aug.lighting_std
        self.eigval = torch.tensor(aug.eigval)
        self.eigvec = torch.tensor(aug.eigvec)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        alpha = torch.randn(3) * self.std
        return image + (self.eigvec @ (alpha * self.eigval)).view(3, 1, 1)


class SubtractMeanImage(torch.nn.Module):
    """The paper's per-pixel mean subtraction, then division by the per-channel std."""

    def __init__(self, path: str, std):
        super().__init__()
        self.mean_image = ops.load_mean_image(path)
        self.std = torch.tensor(std).view(3, 1, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        mean = self.mean_image
        if mean.shape[-2:] != image.shape[-2:]:
            mean = T.functional.resize(mean, list(image.shape[-2:]), antialias=True)
        return (image - mean) / self.std


class StackCrops(torch.nn.Module):
    """TenCrop's tuple of PIL crops -> (10, 3, H, W), each crop finished by `each`."""

    def __init__(self, each):
        super().__init__()
        self.each = each

    def forward(self, crops):
        return torch.stack([self.each(crop) for crop in crops])


def transforms(request: LoaderRequest):
    cfg, train, eval_mode, scale = request.data, request.train, request.eval_mode, request.scale
    aug, (mean, std) = cfg.aug, dataset_stats(cfg)
    to_float = [T.ToImage(), T.ToDtype(torch.float32, scale=True)]
    normalize = (SubtractMeanImage(aug.mean_image, std) if aug.mean_image
                 else T.Normalize(mean, std))
    if not request.imagenet_style:
        geometry = ([T.RandomCrop(list(request.dataset.image_size), padding=aug.pad),
                     T.RandomHorizontalFlip(aug.flip_p)] if train else [])
        return T.Compose([*geometry, *to_float, normalize])
    if train:
        lighting = [Lighting(aug)] if aug.lighting_std > 0 else []
        return T.Compose([T.RandomShortestSize(list(range(aug.scale_min, aug.scale_max + 1))),
                          T.RandomCrop(aug.crop), T.RandomHorizontalFlip(aug.flip_p),
                          *to_float, *lighting, normalize])
    if eval_mode == "center":
        return T.Compose([T.Resize(aug.eval_resize), T.CenterCrop(aug.crop), *to_float,
                          normalize])
    if eval_mode == "tencrop":
        return T.Compose([T.Resize(aug.eval_resize), T.TenCrop(aug.crop),
                          StackCrops(T.Compose([*to_float, normalize]))])
    return T.Compose([T.Resize(scale), *to_float, normalize])


class SeededDataset(torch.utils.data.Dataset):
    """dataset[(position, sample_seed)] -> (image, label); the transform's random draws come from
    torch's global generator, seeded per sample (restored afterwards in the main process)."""

    def __init__(self, read, transform):
        self.read, self.transform = read, transform

    def __getitem__(self, item):
        position, sample_seed = item
        image, label = self.read(position)
        if torch.utils.data.get_worker_info() is not None:
            torch.default_generator.manual_seed(sample_seed)
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed)
            return self.transform(image), label


class PlanSampler(torch.utils.data.Sampler):
    """Batches of (position, seed) from the EpochPlan, read when the DataLoader iterates."""

    def __init__(self, plan: EpochPlan, seed: int, rank: int):
        self.plan, self.seed, self.rank = plan, seed, rank

    def __len__(self):
        return len(self.plan)

    def __iter__(self):
        base = ops.mix_seed(self.seed, self.plan.epoch, 0x5EED) % (1 << 62)
        for _, positions in self.plan.batches():
            yield [(int(p), base + int(p)) for p in positions]


class BaselineLoader(PlannedLoader):
    def __init__(self, request: LoaderRequest):
        cfg = request.data
        blocks = None
        if request.imagenet_style:
            table = sample_table(cfg, request.split)
            reader = ShardReader(table, stream=request.cache.stream)
            read, n, blocks = _ImageNetRead(reader), len(table), table.shard
        else:
            images, labels = cifar_split(cfg, request.split)
            read, n = _ArrayRead(images, labels), len(labels)
        super().__init__(request, n, blocks=blocks)
        workers = max(cfg.num_workers, 0)
        self.loader = torch.utils.data.DataLoader(
            SeededDataset(read, transforms(request)),
            batch_sampler=PlanSampler(self.plan, self.seed, self.rank), num_workers=workers,
            pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
            prefetch_factor=4 if workers else None)

    def __iter__(self):
        request = self.request
        for images, labels in self.loader:
            images = images.to(self.device, non_blocking=True)
            yield (ops.to_dtype_and_layout(images, request.dtype, request.data.channels_last),
                   labels.to(self.device, non_blocking=True))


class _ImageNetRead:
    def __init__(self, reader: ShardReader):
        self.reader = reader

    def __call__(self, position: int):
        blob, label = self.reader.read(position)
        return Image.open(io.BytesIO(blob)).convert("RGB"), label


class _ArrayRead:
    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __call__(self, position: int):
        return Image.fromarray(self.images[position]), int(self.labels[position])
