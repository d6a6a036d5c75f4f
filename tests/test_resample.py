"""The native ImageNet GPU route on the CPU: batched crops equal resize-then-crop, the batched and
per-image routes agree batch for batch, and the decoder's ordering rule holds (its CUDA proof,
the upstream reproducer, runs on a GPU and its set-up on the CPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from pipelines import DataConfig, build_loader, decode, native, ops, resample
from tools.benchmark.decode_order import count_overwrites

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def random_images(n: int, seed: int, device="cpu"):
    rng = np.random.default_rng(seed)
    sizes = [(int(rng.integers(120, 520)), int(rng.integers(120, 520))) for _ in range(n)]
    gen = torch.Generator().manual_seed(seed)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen).to(device)
              for h, w in sizes]
    return images, sizes


@pytest.mark.parametrize("device", DEVICES)
def test_train_crops_equal_resize_then_crop(device):
    """Shorter side S, crop, flip: within 0.02 levels of torchvision's antialiased float resize
    of the whole image, then the crop (float32 sums; both shrinking and enlarging)."""
    images, sizes = random_images(24, seed=0, device=device)
    rng = np.random.default_rng(1)
    scales = [int(rng.integers(256, 481)) for _ in sizes]
    crops = resample.train_crops(sizes, scales, 224, torch.Generator().manual_seed(2), 0.5)
    assert 0 < crops.flip.sum() < len(sizes)
    out = resample.resample_crops(images, crops)
    assert out.shape == (24, 3, 224, 224) and out.dtype == torch.float32
    for i, (image, scale) in enumerate(zip(images, scales)):
        whole = TF.resize(image.float(), [scale], antialias=True)
        assert whole.shape[-2:] == (crops.resized_h[i], crops.resized_w[i])
        top, left = int(crops.top[i]), int(crops.left[i])
        assert 0 <= top <= whole.shape[-2] - 224 and 0 <= left <= whole.shape[-1] - 224
        want = whole[:, top:top + 224, left:left + 224]
        want = want.flip(-1) if crops.flip[i] else want
        assert (out[i] - want).abs().max().item() < 0.02


@pytest.mark.parametrize("device", DEVICES)
def test_center_crops_equal_torchvision(device):
    images, sizes = random_images(12, seed=3, device=device)
    out = resample.resample_crops(images, resample.center_crops(sizes, 256, 224))
    for image, got in zip(images, out):
        want = TF.center_crop(TF.resize(image.float(), [256], antialias=True), [224, 224])
        assert (got - want).abs().max().item() < 0.02


def test_crop_draws_are_uniform():
    """Crop corners over the free range ~ U[0, 1] and flips at p, from the host generator."""
    sizes = [(300, 400)] * 4000
    crops = resample.train_crops(sizes, [256] * 4000, 224, torch.Generator().manual_seed(0),
                                 0.5)
    free_h, free_w = 256 - 224, 341 - 224
    assert crops.top.min() == 0 and crops.top.max() == free_h
    assert crops.left.min() == 0 and crops.left.max() == free_w
    assert abs(crops.left.mean() / free_w - 0.5) < 0.02  # SE 0.0046
    assert abs(crops.flip.mean() - 0.5) < 0.03  # SE 0.008


@pytest.mark.parametrize("split", ["train", "val"])
def test_batched_and_per_image_routes_agree(pattern_records, monkeypatch, split):
    """The CUDA route's geometry (one batched resample) on the CPU gives the CPU route's batches
    up to uint8 rounding: the same draws, crops, flips and lighting."""
    cfg = DataConfig(dataset="imagenet", root=str(pattern_records), batch_size=8,
                     eval_batch_size=5, num_workers=1)

    def batches(batched: bool):
        monkeypatch.setattr(native, "batched_geometry", lambda device: batched)
        loader = build_loader(cfg, split, "cpu", seed=4)
        loader.set_epoch(1)
        return [(ops.unnormalize(x, cfg) * 255, y) for x, y in loader]

    per_image, together = batches(False), batches(True)
    assert len(per_image) == len(together) >= 2
    for (a, la), (b, lb) in zip(per_image, together):
        assert torch.equal(la, lb)
        diff = (a - b).abs()
        assert diff.max() <= 1.01 and diff.mean() < 0.5  # the CPU route rounds to uint8


def test_drain_then_decode_waits_for_the_stream_first(monkeypatch):
    """The ordering rule: the decode stream is synchronized, then the decode runs inside it."""
    calls = []

    class Stream:
        def synchronize(self):
            calls.append("drain")

    class Context:
        def __init__(self, stream):
            calls.append("enter")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            calls.append("exit")

    def fake_decode(data, mode, device):
        calls.append(("decode", len(data), device))
        return ["image"] * len(data)

    monkeypatch.setattr(decode.torch.cuda, "stream", Context)
    monkeypatch.setattr(decode, "decode_jpeg", fake_decode)
    out = decode.drain_then_decode([b"a", b"b"], torch.device("cuda"), Stream())
    assert out == ["image", "image"]
    assert calls == ["drain", "enter", ("decode", 2, torch.device("cuda")), "exit"]


@pytest.mark.parametrize("device", DEVICES)
def test_ordered_decode_never_overwrites_memory_queued_work_reads(device):
    """tools/benchmark/decode_order.py's reproducer through the loader's rule: no reduction
    queued before a decode sees the decoder's bytes (on a GPU the plain route did, see
    bench/results), and every image decodes whole."""
    result = count_overwrites(device, "ordered", rounds=6)
    assert result["wrong"] == 0 and result["reductions"] == 96
    assert result["shapes"] == [(3, 360, 480)]
