"""Helpers shared by the backend tests: back from normalized batches to stored pixels."""
import hashlib

import numpy as np
import torch

from pipelines import DataConfig
from pipelines.ops import unnormalize

CIFAR10_TEST_MEAN = np.array([0.4942, 0.4851, 0.4504])


def as_uint8_hwc(images: torch.Tensor, cfg: DataConfig) -> np.ndarray:
    """Un-normalize back to the stored uint8 pixels (exact for un-augmented CIFAR)."""
    pixels = (unnormalize(images, cfg) * 255).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()


def digests(images: np.ndarray) -> list[str]:
    return [hashlib.blake2b(image.tobytes(), digest_size=12).hexdigest() for image in images]
