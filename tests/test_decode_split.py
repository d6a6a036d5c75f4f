"""The decode split (pipelines/decode.py): on CUDA, data.hw_decoder_load of each batch goes to the
GPU's decoder and the rest is decoded on the CPU and moved in one copy, the images kept in batch
order. The CUDA route runs on the CPU with its CUDA calls stood in for; on a GPU for real."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

from fixtures import photo_array
from pipelines import DataConfig, build_loader, decode, ops

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def jpegs(n: int, seed: int = 0) -> list[torch.Tensor]:
    """n JPEGs of differently sized crops of a real photo, as the loader reads them."""
    from PIL import Image

    photo, rng = photo_array("astronaut"), np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = int(rng.integers(60, 200)), int(rng.integers(60, 200))
        y, x = int(rng.integers(0, 512 - h)), int(rng.integers(0, 512 - w))
        buffer = io.BytesIO()
        Image.fromarray(photo[y:y + h, x:x + w]).save(buffer, "JPEG", quality=90)
        out.append(torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8))
    return out


def test_split_keeps_the_batch_order_and_gives_the_gpu_its_share():
    calls = []

    def route(tag):
        def run(part):
            calls.append((tag, len(part)))
            return [(tag, x) for x in part]
        return run

    data = list(range(10))
    out = decode.split_decode(data, 0.65, route("gpu"), route("cpu"))
    assert [x for _, x in out] == data and calls == [("gpu", 7), ("cpu", 3)]  # 6.5 rounds up
    assert [tag for tag, _ in out] == ["gpu"] * 7 + ["cpu"] * 3
    for share, want in ((1.0, [("gpu", 10)]), (0.0, [("cpu", 10)]), (0.04, [("cpu", 10)]),
                        (0.05, [("gpu", 1), ("cpu", 9)])):
        calls.clear()
        assert [x for _, x in decode.split_decode(data, share, route("gpu"), route("cpu"))] == data
        assert calls == want, share
    calls.clear()
    assert decode.split_decode([], 0.65, route("gpu"), route("cpu")) == [] and calls == []


@pytest.mark.parametrize("device", DEVICES)
def test_upload_moves_a_batch_in_one_copy(device):
    gen = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
              for h, w in ((5, 7), (9, 4), (1, 1), (6, 6))]
    moved = decode.upload(images, torch.device(device))
    assert [m.device.type for m in moved] == [device] * 4
    for image, m in zip(images, moved):
        assert m.shape == image.shape and torch.equal(m.cpu(), image)
    assert len({m.untyped_storage().data_ptr() for m in moved}) == 1  # views of one buffer
    assert decode.upload([], torch.device(device)) == []


@pytest.mark.parametrize("device", DEVICES)
def test_cuda_order_decodes_its_share_on_the_gpu_and_the_rest_on_the_cpu(device, monkeypatch):
    """CudaOrder at hw_decoder_load 0.5: the first half through the ordered GPU decode, the
    second decoded on the CPU and moved inside the thread's stream; pixels as the CPU decodes
    them (on a GPU: nvJPEG's within 3 levels on average, as test_pipelines_native allows)."""
    data, calls = jpegs(6), []
    if device == "cpu":  # stand-ins for the CUDA calls, the rest as on a GPU
        real = decode.drain_then_decode

        def ordered(part, dev, stream):
            calls.append(("gpu decode", len(part)))
            return real(part, dev, stream)

        class Stream:
            def synchronize(self):
                calls.append("drain")

        @contextlib.contextmanager
        def stream_context(stream):
            calls.append("stream")
            yield

        monkeypatch.setattr(decode, "drain_then_decode", ordered)
        monkeypatch.setattr(decode.CudaOrder, "stream", lambda self: Stream())
        monkeypatch.setattr(decode.torch.cuda, "stream", stream_context)
    order = decode.CudaOrder(torch.device(device), 0.5)
    images = order.decode(data)
    want = decode.host_decode(data)
    assert [tuple(i.shape) for i in images] == [tuple(w.shape) for w in want]
    assert all(i.device.type == device for i in images)
    diffs = [(i.cpu().float() - w.float()).abs().mean().item() for i, w in zip(images, want)]
    if device == "cpu":
        assert calls == [("gpu decode", 3), "drain", "stream", "stream"] and max(diffs) == 0
    else:
        assert max(diffs[3:]) == 0 and max(diffs[:3]) < 3.0  # CPU-decoded / nvJPEG-decoded


@pytest.mark.parametrize("device", DEVICES)
def test_loader_batches_with_a_cpu_share_match_the_gpu_decoder_alone(pattern_records, device):
    """The native ImageNet loader at hw_decoder_load 0.5 and 1: the same draws and batches (the
    CPU decodes all of a batch whatever the share; on a GPU, nvJPEG and libjpeg-turbo differ
    by rounding)."""
    def batches(load: float):
        cfg = DataConfig(dataset="imagenet", root=str(pattern_records), batch_size=8,
                         num_workers=2, hw_decoder_load=load)
        loader = build_loader(cfg, "train", device, seed=3)
        loader.set_epoch(0)
        return [(ops.unnormalize(x, cfg).float() * 255, y) for x, y in loader]

    split, alone = batches(0.5), batches(1.0)
    assert len(split) == len(alone) >= 2
    for (a, la), (b, lb) in zip(split, alone):
        assert torch.equal(la, lb) and a.shape == b.shape
        diff = (a - b).abs()
        assert diff.mean().item() < (1e-6 if device == "cpu" else 3.0)  # another image: ~40
