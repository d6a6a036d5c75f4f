"""Every batch of every backend is finite and inside the normalized range: (0-255 pixels - mean)
/ std, widened on ImageNet train by the largest PCA lighting shift a draw can plausibly make.
A NaN or a garbage pixel from a decoder or a resampler fails here, on the CPU routes."""
from __future__ import annotations

import pytest
import torch

from pipelines import AugSpec, DataConfig, build_loader, dataset_stats

BACKENDS = [
    "native", "torchvision",
    pytest.param("ffcv", marks=pytest.mark.ffcv),
    pytest.param("dali", marks=pytest.mark.dali),
]
LIGHTING = 0.12  # |eigvec @ (alpha * eigval)| on the 0-1 scale for |alpha| < 5 sd (0.1)


def bounds(cfg: DataConfig, lighting: bool) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in dataset_stats(cfg))
    margin = (LIGHTING if lighting else 0.0) / std + 1e-3
    return -mean / std - margin, (1 - mean) / std + margin


def check_epoch(cfg: DataConfig, split: str, lighting: bool) -> int:
    low, high = bounds(cfg, lighting)
    loader = build_loader(cfg, split, "cpu", seed=3)
    count = 0
    for images, labels in loader:
        images = images.float()
        assert torch.isfinite(images).all(), f"{cfg.backend} {split}: non-finite pixels"
        assert (images >= low).all() and (images <= high).all(), (
            f"{cfg.backend} {split}: pixels in [{images.min():.3f}, {images.max():.3f}], "
            f"outside the normalized range")
        count += len(labels)
    return count


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("split", ["train", "val"])
def test_imagenet_batches_are_finite_and_in_range(pattern_records, backend, split):
    cfg = DataConfig(dataset="imagenet", root=str(pattern_records), backend=backend,
                     batch_size=8, eval_batch_size=5, num_workers=2, aug=AugSpec())
    assert check_epoch(cfg, split, lighting=split == "train") > 0


@pytest.mark.parametrize("backend", ["native", "torchvision",
                                     pytest.param("dali", marks=pytest.mark.dali)])
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_cifar_batches_are_finite_and_in_range(colour_cifar, backend, split):
    cfg = DataConfig(dataset="cifar10", root=str(colour_cifar), backend=backend, batch_size=32,
                     eval_batch_size=50, val_size=64, num_workers=1)
    assert check_epoch(cfg, split, lighting=False) > 0
