"""data.cache: records read from memory ("ram") or streamed ("stream"), pipelines/cache.py.

The stream order (plan.windowed_order) is a permutation that reads storage in bounded windows;
every ImageNet backend in stream mode still covers each train sample once per epoch over the
ranks, lands on the same batch when resumed, and evaluates the same pixels as in ram mode."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines import DataConfig, build_loader
from pipelines.cache import choose_cache
from pipelines.plan import EpochPlan, windowed_order

IMAGENET_BACKENDS = ["native", "torchvision", "ffcv", "dali"]


def test_windowed_order_is_a_permutation_with_bounded_windows():
    """40 blocks of 50 samples, window 200: a permutation; each window of 200 outputs comes
    from at most 200 / 50 + 1 = 5 blocks; a function of (seed, epoch); far from block order."""
    blocks = np.repeat(np.arange(40), 50)[np.random.default_rng(1).permutation(2000)]
    order = windowed_order(blocks, seed=3, epoch=0, window=200)
    assert sorted(order.tolist()) == list(range(2000))
    spans = [len(set(blocks[order[i:i + 200]])) for i in range(0, 2000, 200)]
    assert max(spans) <= 5
    assert np.array_equal(order, windowed_order(blocks, seed=3, epoch=0, window=200))
    assert not np.array_equal(order, windowed_order(blocks, seed=3, epoch=1, window=200))
    # shuffled inside a window: consecutive outputs are rarely from the same block in order
    positions = np.arange(2000)
    assert np.mean(np.diff(positions[order]) == 1) < 0.05


def test_stream_plan_is_disjoint_and_covers_the_epoch():
    """World 3 over 1,000 samples in 10 blocks, batch 16: equal shares, disjoint, covering all
    but the cut tail (1000 // 3 // 16 * 16 * 3 = 960); the blocks of a rank's batch are few."""
    blocks = np.repeat(np.arange(10), 100)
    plans = [EpochPlan(1000, 16, rank, 3, seed=5, shuffle=True, drop_last=True, blocks=blocks)
             for rank in range(3)]
    for epoch in (0, 1):
        seen = []
        for plan in plans:
            plan.set_epoch(epoch)
            batches = [positions for _, positions in plan.batches()]
            assert len(batches) == len(plan) == 20
            seen += np.concatenate(batches).tolist()
        assert len(seen) == len(set(seen)) == 960
    with pytest.raises(ValueError, match="blocks: 5 entries for 1000 samples"):
        EpochPlan(1000, 16, 0, 1, 0, True, True, blocks=np.zeros(5))


def test_auto_picks_by_size_and_says_why(pattern_records):
    """auto: ram when the split's records fit in half the memory, else stream, with the sizes
    in the reason; explicit modes are kept; CIFAR arrays refuse stream."""
    root = str(pattern_records)
    ram = choose_cache("auto", root, "imagenet", "native", "train", memory=1 << 40)
    stream = choose_cache("auto", root, "imagenet", "native", "train", memory=1 << 10)
    assert (ram.mode, stream.mode) == ("ram", "stream")
    assert "fit in half of 1024.0 GiB available" in ram.why and "exceed" in stream.why
    assert choose_cache("stream", root, "imagenet", "ffcv", "train").stream
    assert not choose_cache("ram", root, "imagenet", "dali", "train", memory=1).stream
    assert choose_cache("stream", root, "imagenet", "synthetic", "train").mode == "ram"
    with pytest.raises(ValueError, match="data.cache=stream: cifar10 is loaded into memory"):
        choose_cache("stream", "unread", "cifar10", "native", "train")
    with pytest.raises(ValueError, match="data.cache=stream: cifar10 is loaded into memory"):
        DataConfig(cache="stream")
    with pytest.raises(ValueError, match="data.cache='disk'"):
        DataConfig(cache="disk")


def cfg_for(root, backend: str, cache: str) -> DataConfig:
    return DataConfig(dataset="imagenet", root=str(root), backend=backend, batch_size=4,
                      eval_batch_size=5, num_workers=2, cache=cache)


def labels_of(batches) -> list[int]:
    return [int(y) for _, labels in batches for y in labels]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", IMAGENET_BACKENDS)
def test_stream_mode_covers_resumes_and_reads_the_same_pixels(pattern_records, backend):
    """Stream mode, world 2 over the 24 uniquely labelled train images: each epoch the ranks'
    samples are disjoint and as many as in ram mode; a pass resumed at batch 1 is the full
    pass's tail; eval batches equal ram mode's exactly."""
    if backend in ("ffcv", "dali"):
        pytest.importorskip(backend if backend == "ffcv" else "nvidia.dali")
    stream, ram = cfg_for(pattern_records, backend, "stream"), cfg_for(pattern_records, backend,
                                                                       "ram")
    for epoch in (0, 1):
        shares, ram_count = [], 0
        for rank in range(2):
            loader = build_loader(stream, "train", "cpu", rank=rank, world_size=2, seed=4)
            assert loader.request.cache.stream
            loader.set_epoch(epoch)
            batches = list(loader)
            assert len(batches) == len(loader)
            assert all(torch.isfinite(x).all() for x, _ in batches)
            shares.append(labels_of(batches))
            loader.set_epoch(epoch, start=1)
            tail = list(loader)
            assert labels_of(tail) == labels_of(batches[1:])
            for (a, _), (b, _) in zip(tail, batches[1:]):
                assert torch.equal(a, b)
            baseline = build_loader(ram, "train", "cpu", rank=rank, world_size=2, seed=4)
            baseline.set_epoch(epoch)
            ram_count += len(labels_of(baseline))
        assert not set(shares[0]) & set(shares[1])
        assert len(shares[0]) + len(shares[1]) == ram_count
    for mode in ("center", "tencrop"):
        got = list(build_loader(stream, "val", "cpu", eval_mode=mode))
        want = list(build_loader(ram, "val", "cpu", eval_mode=mode))
        assert labels_of(got) == labels_of(want)
        for (a, _), (b, _) in zip(got, want):
            assert torch.equal(a, b)
