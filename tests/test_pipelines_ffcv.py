"""The FFCV backend's own behaviour (tests/test_pipeline_contract.py checks the shared contract
and the augmentation statistics against the other backends).

Every test has a timeout: FFCV hangs instead of raising when a loader thread fails. Each Loader
costs a few seconds of numba compilation, so the tests build few of them.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fixtures import CIFAR10_TEST_MEAN, as_uint8_hwc, digests, train_items
from pipelines import AugSpec, DataConfig, build_loader
from pipelines.ops import unnormalize
from pipelines.readers import load_cifar_arrays, split_positions

pytestmark = [pytest.mark.ffcv, pytest.mark.timeout(180)]


def test_cifar_ddp_shards_deliver_the_split_pixels(cifar10_records):
    """world_size=2 without augmentation: the ranks' images are exactly the 45k train split's
    stored pixels, disjoint, same number of batches; val/test keep order; test statistics."""
    threads = torch.get_num_threads()
    cfg = DataConfig(dataset="cifar10", root=str(cifar10_records), backend="ffcv",
                     batch_size=500, eval_batch_size=1000, num_workers=2,
                     aug=AugSpec(pad=0, flip_p=0.0))
    official, labels = load_cifar_arrays(DataConfig(root=str(cifar10_records)), "train")
    train_index = split_positions(cfg, "train")
    shares, counts = [], []
    for rank in (0, 1):
        loader = build_loader(cfg, "train", "cpu", rank=rank, world_size=2, seed=4)
        loader.set_epoch(3)
        batches = list(loader)
        counts.append((len(batches), len(loader)))
        images = np.concatenate([as_uint8_hwc(x, cfg) for x, _ in batches])
        got_labels = torch.cat([y for _, y in batches]).numpy()
        shares.append(dict(zip(digests(images), got_labels)))
        assert len(shares[-1]) == len(images)  # CIFAR-10 train has no duplicate images
    assert counts == [(45, 45), (45, 45)]  # 22,500 images per rank in batches of 500
    assert not shares[0].keys() & shares[1].keys()
    expected = dict(zip(digests(official[train_index]), labels[train_index]))
    assert {**shares[0], **shares[1]} == expected  # the pixels and their labels
    assert torch.get_num_threads() == threads  # FFCV's thread setting was undone

    val = build_loader(cfg, "val", "cpu")
    assert len(val) == 5
    val_labels = torch.cat([y for _, y in val]).numpy()
    np.testing.assert_array_equal(val_labels, labels[split_positions(cfg, "val")])

    test = build_loader(cfg, "test", "cpu")
    images = torch.cat([unnormalize(x, cfg) for x, _ in test])
    assert images.shape == (10000, 3, 32, 32) and len(test) == 10
    np.testing.assert_allclose(images.mean((0, 2, 3)).numpy(), CIFAR10_TEST_MEAN, atol=1e-3)


def test_scale_crop_box_draws_the_paper_scales():
    """The numba crop function, run as plain Python: implied shorter side S = 224 * short / c
    covers U{256..480} (rounding of c moves S by < 1.2 px here), boxes stay inside."""
    from pipelines.ffcv import scale_crop_box

    np.random.seed(0)
    height, width, short = 375, 500, 375
    boxes = np.array([scale_crop_box(height, width, np.array([256, 480]), 224.0)
                      for _ in range(20000)])
    top, left, h, w = boxes.T
    assert (h == w).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    implied = 224 * short / h
    assert 254.8 <= implied.min() <= 257 and 479 <= implied.max() <= 481.2
    assert abs(implied.mean() - 368) < 2  # SE 0.46 px
    assert abs(implied.std() - 64.95) < 2
    assert abs(np.mean(left / (width - h)) - 0.5) < 0.02


def test_read_u64_sees_python_updates():
    """The per-epoch seed reaches compiled code through an address: numba must read the value
    current at call time, not a frozen copy."""
    numba = pytest.importorskip("numba")
    from pipelines.ffcv import read_u64

    cell = np.zeros(1, dtype=np.uint64)
    address = cell.ctypes.data
    read_c = numba.njit(read_u64)
    read = numba.njit(lambda: read_c(address))
    cell[0] = 12345678901234
    assert read() == 12345678901234
    cell[0] = 7
    assert read() == 7


def test_imagenet_train_resume_and_eval_buffer_cap(pattern_records, monkeypatch):
    """Train: a resumed pass repeats the uninterrupted one from batch `start`, images and all.
    Eval with the decode buffer capped to one image per FFCV batch still covers the split."""
    import pipelines.ffcv as ffcv_backend

    cfg = DataConfig(dataset="imagenet", root=str(pattern_records), backend="ffcv",
                     batch_size=6, eval_batch_size=4, num_workers=2, dtype="bfloat16")
    train = build_loader(cfg, "train", "cpu", seed=11)
    train.set_epoch(2)
    full = list(train)
    train.set_epoch(2, start=2)
    resumed = list(train)
    assert len(full) == len(train) == 4 and len(resumed) == 2
    for (a, la), (b, lb) in zip(full[2:], resumed):
        assert a.dtype == torch.bfloat16 and a.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(a, b) and torch.equal(la, lb)
    assert sorted(torch.cat([y for _, y in full]).tolist()) == list(range(len(train_items())))

    monkeypatch.setattr(ffcv_backend, "DECODE_BUDGET", 1)
    val = build_loader(cfg, "val", "cpu", eval_mode="tencrop")
    batches = list(val)
    assert len(val) == len(batches) == 10  # one image per batch under the cap
    assert all(x.shape == (1, 10, 3, 224, 224) for x, _ in batches)
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == list(range(10))


def test_missing_beton_names_the_file(tmp_path, cifar10_records):
    import shutil

    root = tmp_path / "cifar10"
    shutil.copytree(cifar10_records, root, ignore=shutil.ignore_patterns("*.beton"))
    cfg = DataConfig(dataset="cifar10", root=str(root), backend="ffcv")
    with pytest.raises(FileNotFoundError, match=r"ffcv/test\.beton"):
        build_loader(cfg, "test", "cpu")


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.parametrize("device", [pytest.param("cpu", marks=pytest.mark.slow),
                                    pytest.param("cuda", marks=pytest.mark.cuda)])
def test_cuda_route_matches_cpu(cifar10_records, pattern_records, device):
    """ToDevice('cuda'): batches arrive on the GPU with the CPU route's labels and pixels."""
    for root, dataset, split in ((cifar10_records, "cifar10", "test"),
                                 (pattern_records, "imagenet", "val")):
        cfg = DataConfig(dataset=dataset, root=str(root), backend="ffcv", eval_batch_size=4,
                         num_workers=2)
        on_cpu = list(build_loader(cfg, split, "cpu"))[:3]
        on_gpu = list(build_loader(cfg, split, device))[:3]
        for (xc, yc), (xg, yg) in zip(on_cpu, on_gpu):
            assert xg.device.type == device and yg.device.type == device
            assert xg.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(yc, yg.cpu())
            torch.testing.assert_close(xg.cpu(), xc, atol=0.05, rtol=0)  # GPU resize rounding
    cfg = DataConfig(dataset="imagenet", root=str(pattern_records), backend="ffcv",
                     batch_size=8, num_workers=2)
    images, labels = next(iter(build_loader(cfg, "train", device)))
    assert images.device.type == device and images.shape == (8, 3, 224, 224)
    assert labels.dtype == torch.int64 and labels.device.type == device
