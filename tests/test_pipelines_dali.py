"""The DALI backend's own behaviour (tests/test_pipeline_contract.py checks the shared contract
and the augmentation statistics against the other backends). All CPU: device_id=None."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fixtures import CIFAR10_TEST_MEAN, as_uint8_hwc, digests, val_items
from pipelines import AugSpec, DataConfig, LoaderRequest, build_loader
from pipelines.ops import unnormalize
from pipelines.plan import EpochPlan
from pipelines.readers import load_cifar_arrays, split_positions
from pipelines.spec import IMAGENET_EIGVAL, IMAGENET_EIGVEC

pytestmark = [pytest.mark.dali, pytest.mark.timeout(180)]


def imagenet_cfg(root, **changes) -> DataConfig:
    cfg = DataConfig(dataset="imagenet", root=str(root), backend="dali", batch_size=4,
                     eval_batch_size=3, num_workers=2)
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def test_cifar_ddp_shards_deliver_the_split_pixels(cifar10_records):
    """world_size=2 without augmentation: the ranks' images are exactly the 45k train split's
    stored pixels, disjoint, same number of batches; a resumed pass is the tail of the full
    one; val/test keep order; test statistics."""
    cfg = DataConfig(dataset="cifar10", root=str(cifar10_records), backend="dali",
                     batch_size=500, eval_batch_size=1000, num_workers=2,
                     aug=AugSpec(pad=0, flip_p=0.0))
    official, labels = load_cifar_arrays(DataConfig(root=str(cifar10_records)), "train")
    train_index = split_positions(cfg, "train")
    shares = []
    for rank in (0, 1):
        loader = build_loader(cfg, "train", "cpu", rank=rank, world_size=2, seed=4)
        loader.set_epoch(3)
        batches = list(loader)
        assert len(batches) == len(loader) == 45
        images = np.concatenate([as_uint8_hwc(x, cfg) for x, _ in batches])
        shares.append(dict(zip(digests(images), torch.cat([y for _, y in batches]).numpy())))
        assert len(shares[-1]) == len(images) == 22500
    assert not shares[0].keys() & shares[1].keys()
    expected = dict(zip(digests(official[train_index]), labels[train_index]))
    assert {**shares[0], **shares[1]} == expected

    loader.set_epoch(3, start=40)
    resumed = list(loader)
    assert len(resumed) == 5
    for (a, la), (b, lb) in zip(batches[40:], resumed):
        assert torch.equal(a, b) and torch.equal(la, lb)

    val = build_loader(cfg, "val", "cpu")
    val_labels = torch.cat([y for _, y in val]).numpy()
    np.testing.assert_array_equal(val_labels, labels[split_positions(cfg, "val")])
    test = build_loader(cfg, "test", "cpu")
    images = torch.cat([unnormalize(x, cfg) for x, _ in test])
    assert images.shape == (10000, 3, 32, 32) and len(test) == 10
    np.testing.assert_allclose(images.mean((0, 2, 3)).numpy(), CIFAR10_TEST_MEAN, atol=1e-3)


def test_cifar_pad_crop_is_a_shifted_window(cifar10_records):
    """fn.slice with a random integer anchor in [-4, 4] and zero padding: every augmented image
    is a 32x32 window of its zero-padded source (known from the EpochPlan), maybe mirrored."""
    cfg = DataConfig(dataset="cifar10", root=str(cifar10_records), backend="dali",
                     batch_size=256, num_workers=2)
    official = load_cifar_arrays(DataConfig(root=str(cifar10_records)), "train")[0]
    split = official[split_positions(cfg, "train")]
    plan = EpochPlan(len(split), 256, 0, 1, seed=0, shuffle=True, drop_last=True)
    sources = np.pad(split[plan.indices()[:256]], ((0, 0), (4, 4), (4, 4), (0, 0)))
    images, _ = next(iter(build_loader(cfg, "train", "cpu", seed=0)))
    draws = []
    for image, source in zip(as_uint8_hwc(images, cfg), sources):
        found = [(dy, dx, flip) for flip in (False, True) for dy in range(9) for dx in range(9)
                 if np.array_equal(source[dy:dy + 32, dx:dx + 32],
                                   image[:, ::-1] if flip else image)]
        assert found, "an augmented image is no window of its padded source"
        draws.append(found[0])
    dy, dx, flip = np.array(draws).T
    assert abs(flip.mean() - 0.5) < 0.1  # 256 draws: 3.2 SE
    assert set(dy) == set(dx) == set(range(9))  # every offset in [-4, 4] occurs
    assert abs(dy.mean() - 4) < 0.5 and abs(dx.mean() - 4) < 0.5  # SE 0.16


def test_lighting_fold_matches_pca_covariance():
    """The lighting folded into crop_mirror_normalize's per-sample mean, on a uniform image:
    the recovered shift has covariance eigvec diag((0.1 eigval)^2) eigvec^T. 4096 draws: the
    standard error of each direction's std is 1.1%, so 5% (4.5 SE); correlations within 0.07
    (4.5 SE); the shift is the same on every pixel of an image."""
    from nvidia.dali import fn, pipeline_def, types

    from pipelines.dali import _normalize_args, lighting_shift

    cfg = DataConfig(dataset="imagenet")
    grey = np.full((8, 8, 3), 128, dtype=np.uint8)

    @pipeline_def(batch_size=4096, num_threads=2, device_id=None, seed=5)
    def pipe():
        images = fn.external_source(source=lambda: [grey] * 4096, batch=True, layout="HWC")
        mean, std = _normalize_args(cfg, lighting_shift(cfg.aug))
        return fn.crop_mirror_normalize(images, mean=mean, std=std, dtype=types.FLOAT,
                                        output_layout="CHW")

    p = pipe()
    p.build()
    (out,) = p.run()
    images = unnormalize(torch.from_numpy(np.stack([np.array(t) for t in out])), cfg)
    assert float(images.std(dim=(2, 3)).max()) < 1e-5  # one shift per image
    shifts = images.mean(dim=(2, 3)).double().numpy() - 128 / 255
    eigvec, eigval = np.array(IMAGENET_EIGVEC), np.array(IMAGENET_EIGVAL)
    alpha = shifts @ np.linalg.inv(eigvec).T / eigval  # shift = eigvec @ (alpha * eigval)
    np.testing.assert_allclose(alpha.std(0), 0.1, rtol=0.05)
    assert np.abs(alpha.mean(0)).max() < 0.007
    assert np.abs(np.corrcoef(alpha.T) - np.eye(3)).max() < 0.07
    expected = eigvec @ np.diag((0.1 * eigval) ** 2) @ eigvec.T
    assert np.linalg.norm(np.cov(shifts.T) - expected) < 0.1 * np.linalg.norm(expected)


def test_cls_labels_are_parsed_and_checked():
    from pipelines.dali import ImageNetLoader

    loader = ImageNetLoader.__new__(ImageNetLoader)
    loader.request = LoaderRequest(DataConfig("imagenet"), "val", "cpu")
    rows = [b"7", b"999", b"12\n", b"0"]
    codes = torch.tensor([list(r.ljust(4, b"\0")) for r in rows], dtype=torch.uint8)
    assert loader._labels(codes).tolist() == [7, 999, 12, 0]
    with pytest.raises(ValueError, match=r"not a class index: b'1x'"):
        loader._labels(torch.tensor([list(b"1x\0\0")], dtype=torch.uint8))


def test_uneven_shards_and_epoch_rotation(pattern_records):
    """world_size=5 over 24 train images: DALI's shards hold 4 or 5, every rank stops after the
    smallest shard's batches; shards are disjoint and rotate between epochs; a rebuilt pass of
    the same epoch repeats itself exactly. Eval over 3 ranks covers the 10 val images."""
    cfg = imagenet_cfg(pattern_records, batch_size=2)
    per_epoch = []
    for epoch in (0, 1):
        shares = []
        for rank in range(5):
            loader = build_loader(cfg, "train", "cpu", rank=rank, world_size=5, seed=9)
            loader.set_epoch(epoch)
            batches = list(loader)
            assert len(batches) == len(loader) == 2
            shares.append(frozenset(torch.cat([y for _, y in batches]).tolist()))
        assert sum(map(len, shares)) == len(frozenset().union(*shares)) == 20
        per_epoch.append(shares)
    assert per_epoch[0] != per_epoch[1]  # rank r reads shard (r + epoch) % 5

    loader.set_epoch(1)
    first, again = list(loader), list(loader)
    for (a, la), (b, lb) in zip(first, again):
        assert torch.equal(a, b) and torch.equal(la, lb)

    seen = []
    for rank in range(3):
        val = build_loader(cfg, "val", "cpu", rank=rank, world_size=3)
        batches = list(val)
        assert len(batches) == len(val)
        seen += torch.cat([y for _, y in batches]).tolist()
    assert sorted(seen) == list(range(len(val_items())))


def test_multiscale_sizes_follow_torchvision(pattern_records):
    """Shorter side = S exactly and the longer side floored, as torchvision's Resize([S])."""
    cfg = imagenet_cfg(pattern_records)
    sizes = {item.label: item.size for item in val_items()}
    for scale in (224, 383):
        for images, labels in build_loader(cfg, "val", "cpu", eval_mode="multiscale",
                                           scale=scale):
            height, width = sizes[int(labels[0])]
            short, long = min(height, width), max(height, width)
            want = (scale, scale * long // short)
            assert tuple(images.shape[-2:]) == (want if height <= width else want[::-1])


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.parametrize("device", [pytest.param("cpu", marks=pytest.mark.slow),
                                    pytest.param("cuda", marks=pytest.mark.cuda)])
def test_gpu_route_matches_cpu(cifar10_records, pattern_records, device):
    """decoders.image(device='mixed') and GPU operators: same labels, pixels within decoder and
    resampling differences of the CPU route."""
    for root, dataset, split in ((cifar10_records, "cifar10", "test"),
                                 (pattern_records, "imagenet", "val")):
        cfg = DataConfig(dataset=dataset, root=str(root), backend="dali", eval_batch_size=4,
                         num_workers=2)
        on_cpu = list(build_loader(cfg, split, "cpu"))[:3]
        on_gpu = list(build_loader(cfg, split, device))[:3]
        for (xc, yc), (xg, yg) in zip(on_cpu, on_gpu):
            assert xg.device.type == device and yg.device.type == device
            assert xg.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(yc, yg.cpu())
            diff = (xg.cpu() - xc).abs() * 0.229 * 255  # about levels of 0-255
            assert float(diff.mean()) < 2.5
    cfg = imagenet_cfg(pattern_records, batch_size=8)
    images, labels = next(iter(build_loader(cfg, "train", device)))
    assert images.device.type == device and images.shape == (8, 3, 224, 224)
    assert labels.dtype == torch.int64 and labels.device.type == device


def test_out_of_range_cls_is_refused_when_the_loader_is_built(tmp_path):
    """DALI's reader hands the .cls bytes on unchecked: the loader checks every label at build,
    as the other backends do (a label of 1000 would otherwise reach the loss)."""
    import io

    from PIL import Image

    from fixtures import write_imagenet_records
    from records.format import RecordsError

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "JPEG")
    good = [(f"k{i}", buffer.getvalue(), i) for i in range(4)]
    bad = good[:2] + [("k2", buffer.getvalue(), 1000), good[3]]
    bad_val = write_imagenet_records(tmp_path / "v", {"train": good, "val": bad}, 1000)
    bad_train = write_imagenet_records(tmp_path / "t", {"train": bad, "val": good}, 1000)
    assert len(build_loader(imagenet_cfg(bad_val, batch_size=2), "train", "cpu")) == 2
    for root, split in ((bad_val, "val"), (bad_train, "train")):
        with pytest.raises(RecordsError, match=r"shard-000000.tar: k2.cls holds b'1000', not a "
                                               r"label in \[0, 1000\); convert again"):
            build_loader(imagenet_cfg(root, batch_size=2), split, "cpu")
