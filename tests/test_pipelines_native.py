"""Unit tests of the shared ops, the record readers, build_loader's checks, and the native,
torchvision-baseline and synthetic loaders on tiny records written here."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures import write_cifar_records, write_imagenet_records
from pipelines import AugSpec, DataConfig, LoaderRequest, build_loader, ops, resample
from pipelines.plan import EpochPlan, PlannedLoader, shard_indices
from pipelines.readers import ShardReader, sample_table, split_positions
from pipelines.spec import IMAGENET_EIGVAL, IMAGENET_EIGVEC
from records import datasets
from records import format as fmt
from train.loop import accumulate


# ----------------------------------------------------------------------------- tiny records
def write_manifest(root, dataset, counts, classes):
    """A manifest listing every file under root."""
    from tools.converter.writers.atomic import sha256_file

    root.mkdir(parents=True, exist_ok=True)
    formats = [datasets.get(dataset).formats[0]]
    files = {p.relative_to(root).as_posix(): sha256_file(p) for p in root.rglob("*")
             if p.is_file() and p.name != fmt.MANIFEST}
    fmt.write_manifest(root, fmt.make_manifest(
        dataset=dataset, formats=formats, source="test", settings={}, classes=classes,
        splits={split: {"count": n, "per_class": []} for split, n in counts.items()},
        files=files, root=root))


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory):
    """CIFAR-format records: 120 train / 30 test random images (random pixels make every
    image and every crop of it unique, so outputs can be traced back)."""
    rng = np.random.default_rng(0)
    arrays = {split: (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                      rng.integers(0, 10, n).astype(np.int64))
              for split, n in (("train", 120), ("test", 30))}
    return write_cifar_records(tmp_path_factory.mktemp("tiny"), arrays), arrays


def cifar_cfg(root, backend="native", **kw) -> DataConfig:
    kw.setdefault("val_size", 20)
    return DataConfig(dataset="cifar10", root=str(root), backend=backend, batch_size=16,
                      eval_batch_size=7, num_workers=0, **kw)


def to_uint8(images: torch.Tensor, cfg: DataConfig) -> np.ndarray:
    return np.round(ops.unnormalize(images, cfg).numpy() * 255).astype(np.int64)


# ----------------------------------------------------------------------------- ops
def test_mix_seed():
    assert ops.mix_seed(1, 2, 3) == ops.mix_seed(1, 2, 3)
    assert len({ops.mix_seed(0, e, r) for e in range(50) for r in range(4)}) == 200
    assert 0 <= ops.mix_seed(7) < 2**63


def test_random_flip_per_sample():
    images = torch.arange(4000 * 3 * 2 * 5, dtype=torch.float32).view(4000, 3, 2, 5)
    out = ops.random_flip(images, 0.5, ops.make_generator("cpu", 0))
    same = (out == images).flatten(1).all(1)
    mirrored = (out == images.flip(-1)).flatten(1).all(1)
    assert (same ^ mirrored).all()
    assert abs(mirrored.float().mean().item() - 0.5) < 0.03  # 4000 draws: SE 0.008
    assert torch.equal(ops.random_flip(images, 0.0, None), images)
    assert torch.equal(ops.random_flip(images, 1.0, ops.make_generator("cpu", 1)),
                       images.flip(-1))


def test_pad_random_crop_is_a_shifted_window():
    images = torch.randint(1, 256, (600, 3, 8, 8), dtype=torch.uint8)
    out = ops.pad_random_crop(images, 2, ops.make_generator("cpu", 0))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    shifts = []
    for i in range(len(images)):
        found = [(dy, dx) for dy in range(5) for dx in range(5)
                 if torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8])]
        assert len(found) == 1
        shifts.append(found[0])
    counts = np.bincount([dy * 5 + dx for dy, dx in shifts], minlength=25)
    assert counts.min() > 6  # all 25 shifts occur (600 draws, 24 expected each)
    flipped = ops.pad_random_crop(images, 2, ops.make_generator("cpu", 0), flip_p=1.0)
    assert out.shape == flipped.shape == images.shape


@pytest.mark.parametrize("width", [8, 4, 9])  # int64, int32 and byte row words
def test_crop_flip_gather_matches_slicing(width):
    images = torch.randint(0, 256, (50, 8, width, 3), dtype=torch.uint8)
    store = ops.pixel_store(images, 2)
    padded = torch.nn.functional.pad(images.permute(0, 3, 1, 2), (2, 2, 2, 2))
    samples = torch.tensor([3, 7, 7, 49, 0])
    rows, cols = ops.crop_flip_indices(5, (8, width), 2, 0.5, ops.make_generator("cpu", 3),
                                       "cpu")
    out = ops.gather_crops(store, samples, rows, cols)
    assert out.shape == (5, 3, 8, width)
    for i, s in enumerate(samples.tolist()):
        top, left = int(rows[i, 0]), int(min(cols[i, 0], cols[i, -1]))
        want = padded[s, :, top:top + 8, left:left + width]
        if cols[i, 0] > cols[i, -1]:
            want = want.flip(-1)
        assert torch.equal(out[i], want)
    assert torch.equal(ops.take(ops.pixel_store(images), samples),
                       images[samples].permute(0, 3, 1, 2))


def test_lighting_shift_covariance():
    shift = ops.lighting_shift(200_000, AugSpec(), ops.make_generator("cpu", 0), "cpu")
    eigvec, eigval = np.array(IMAGENET_EIGVEC), np.array(IMAGENET_EIGVAL)
    expected = eigvec @ np.diag((0.1 * eigval) ** 2) @ eigvec.T
    np.testing.assert_allclose(np.cov(shift.numpy().T), expected, atol=0.02 * expected.max())
    alpha = shift.numpy() @ eigvec / eigval  # eigvec is orthonormal to 4 decimals
    np.testing.assert_allclose(alpha.std(0), 0.1, rtol=0.01)
    assert ops.lighting_shift(3, AugSpec(lighting_std=0), None, "cpu").abs().max() == 0


def test_normalize_uint8_float_shift_and_layout(tmp_path):
    cfg = DataConfig()
    normalize = ops.Normalize(cfg, "cpu")
    images = torch.randint(0, 256, (4, 3, 5, 6), dtype=torch.uint8)
    cifar10 = datasets.DATASETS["cifar10"]
    mean, std = (torch.tensor(stat).view(3, 1, 1) for stat in (cifar10.mean, cifar10.std))
    want = (images.float() / 255 - mean) / std
    out = normalize(images)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(normalize(images.float()), want)  # float on the 0-255 scale
    shift = torch.randn(4, 3) * 0.02
    torch.testing.assert_close(normalize(images, shift),
                               (images.float() / 255 + shift.view(4, 3, 1, 1) - mean) / std)
    tencrop = normalize(images[:, None].expand(4, 10, 3, 5, 6), shift)
    assert tencrop.shape == (4, 10, 3, 5, 6)
    torch.testing.assert_close(tencrop[:, 7], normalize(images, shift))
    pixel_major = images.contiguous(memory_format=torch.channels_last)  # the fast path
    torch.testing.assert_close(normalize(pixel_major, shift), normalize(images, shift))
    torch.testing.assert_close(normalize(pixel_major.float(), shift), normalize(images, shift))
    cfg.dtype, cfg.channels_last = "bfloat16", False
    out = ops.Normalize(cfg, "cpu")(images)
    assert out.dtype == torch.bfloat16 and out.is_contiguous()


def test_mean_image(tmp_path):
    mean_image = np.random.default_rng(0).uniform(0.2, 0.8, (5, 6, 3)).astype(np.float32)
    np.save(tmp_path / "mean.npy", mean_image)
    cfg = DataConfig(aug=AugSpec(mean_image=str(tmp_path / "mean.npy")))
    images = torch.randint(0, 256, (2, 3, 5, 6), dtype=torch.uint8)
    std = torch.tensor(datasets.DATASETS["cifar10"].std).view(3, 1, 1)
    want = (images.float() / 255 - torch.from_numpy(mean_image).permute(2, 0, 1)) / std
    torch.testing.assert_close(ops.Normalize(cfg, "cpu")(images), want)
    pixel_major = images.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ops.Normalize(cfg, "cpu")(pixel_major), want)
    assert ops.Normalize(cfg, "cpu")(torch.zeros(1, 3, 10, 12)).shape == (1, 3, 10, 12)
    np.save(tmp_path / "bad.npy", mean_image * 255)
    with pytest.raises(ValueError, match="0-1 scale"):
        ops.load_mean_image(tmp_path / "bad.npy")
    np.save(tmp_path / "gray.npy", mean_image[..., 0])
    with pytest.raises(ValueError, match="H x W x 3"):
        ops.load_mean_image(tmp_path / "gray.npy")
    with pytest.raises(FileNotFoundError, match="mean_image"):
        ops.load_mean_image(tmp_path / "missing.npy")


def test_ten_crop_and_resize():
    image = torch.arange(300 * 400, dtype=torch.float32).view(1, 300, 400).expand(3, -1, -1)
    assert ops.resize_shorter(image, 256).shape == (3, 256, 341)
    crops = ops.ten_crop(image, 256, 224)
    assert crops.shape == (10, 3, 224, 224)
    resized = ops.resize_shorter(image, 256)
    torch.testing.assert_close(crops[0], resized[:, :224, :224])
    torch.testing.assert_close(crops[3], resized[:, -224:, -224:])
    torch.testing.assert_close(crops[5], resized[:, :224, -224:].flip(-1))
    with pytest.raises(ValueError, match="smaller than the 224x224 crop"):
        resample.train_crops([(200, 300)], [200], 224, ops.make_generator("cpu", 0), 0.5)


# ----------------------------------------------------------------------------- records
@pytest.mark.parametrize("n,world,batch", [(103, 1, 8), (103, 2, 8), (100, 3, 7), (5, 2, 2)])
def test_shard_indices(n, world, batch):
    for epoch in (0, 1):
        train = [shard_indices(n, r, world, 0, epoch, True, True, batch) for r in range(world)]
        assert len({len(t) for t in train}) == 1 and len(train[0]) % batch == 0
        assert len(train[0]) == (n // world) // batch * batch
        flat = np.concatenate(train)
        assert len(set(flat)) == len(flat) and set(flat) <= set(range(n))
        evals = [shard_indices(n, r, world, 0, epoch, False, False, batch) for r in range(world)]
        assert sorted(np.concatenate(evals).tolist()) == list(range(n))
    first = shard_indices(n, 0, world, 0, 0, True, True, batch)
    assert np.array_equal(first, shard_indices(n, 0, world, 0, 0, True, True, batch))
    if len(first) > 3:
        assert not np.array_equal(first, shard_indices(n, 0, world, 0, 1, True, True, batch))


def test_epoch_plan():
    plan = EpochPlan(50, 8, 0, 1, seed=0, shuffle=False, drop_last=False)
    assert len(plan) == 7 and [len(b) for _, b in plan.batches()] == [8] * 6 + [2]
    plan.set_epoch(0, start=5)
    assert [n for n, _ in plan.batches()] == [5, 6]
    assert len(list(plan.batches())) == 7  # start applies to one pass only
    with pytest.raises(ValueError, match="start"):
        plan.set_epoch(0, start=8)
    with pytest.raises(ValueError, match="no full batch"):
        EpochPlan(10, 8, 0, 2, 0, True, True)


def test_read_manifest_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"manifest.json: no records here.*"
                                                 r"make dataset-imagenet"):
        fmt.read_manifest(tmp_path, "imagenet")
    write_manifest(tmp_path, "cifar10", {"train": 1, "test": 0}, ["a"])
    with pytest.raises(ValueError, match="'cifar10' but data.dataset='imagenet'"):
        fmt.read_manifest(tmp_path, "imagenet")
    old = {"dataset": "cifar10", "version": 1, "classes": [], "splits": {}}
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(fmt.RecordsError, match=r"format version 1, this code reads version 3; "
                                                r"convert again: make dataset-cifar10"):
        fmt.read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(fmt.RecordsError, match="not valid JSON"):
        fmt.read_manifest(tmp_path)


def test_backend_needs_its_format(tiny_cifar):
    """An arrays-only folder: the ffcv backend is told which records it lacks and the command
    that writes them (without importing FFCV)."""
    manifest = fmt.read_manifest(tiny_cifar[0])
    with pytest.raises(FileNotFoundError, match=r"data.backend='ffcv' reads the 'ffcv' records.*"
                                                 r"make dataset-cifar10"):
        fmt.require_format(tiny_cifar[0], manifest, "ffcv")
    assert fmt.require_format(tiny_cifar[0], manifest, "dali") == "arrays"
    assert fmt.require_format(tiny_cifar[0], manifest, "synthetic") is None


def test_split_positions(tiny_cifar):
    root, _ = tiny_cifar
    cfg = cifar_cfg(root)
    train, val = split_positions(cfg, "train"), split_positions(cfg, "val")
    assert len(train) == 100 and len(val) == 20 and not set(train) & set(val)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(120))
    assert np.array_equal(val, split_positions(cifar_cfg(root), "val"))  # fixed seed
    assert not np.array_equal(val, split_positions(cifar_cfg(root, split_seed=1), "val"))
    assert len(split_positions(cifar_cfg(root, val_size=0), "train")) == 120
    assert np.array_equal(split_positions(cfg, "test"), np.arange(30))
    with pytest.raises(ValueError, match="val_size"):
        split_positions(cifar_cfg(root, val_size=120), "train")


def write_shard(path, samples):
    """A shard written with tarfile (not the converter's writer), its index by records.format."""
    lines = []
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, payload, label in samples:
            parts = []
            for ext, data in (("jpg", payload), ("cls", str(label).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                parts.append((ext, tar.offset - -(-len(data) // 512) * 512, len(data)))
            lines.append(fmt.shard_index_line(key, parts))
    path.with_suffix(".idx").write_text(fmt.shard_index_text(lines))


def test_shard_reader(tmp_path):
    root = tmp_path / "imagenet"
    (root / fmt.shard_folder_rel("val")).mkdir(parents=True)
    samples = [(f"k{i:03d}", bytes([i]) * (100 + 700 * i), i % 3) for i in range(5)]
    write_shard(root / fmt.shard_rel("val", 0), samples[:3])
    write_shard(root / fmt.shard_rel("val", 1), samples[3:])
    write_manifest(root, "imagenet", {"train": 0, "val": 5}, ["a", "b", "c"])
    cfg = DataConfig(dataset="imagenet", root=str(root))
    reader = ShardReader(sample_table(cfg, "val"))
    assert len(reader) == 5
    for i, (_, payload, label) in enumerate(samples):
        assert reader.read(i) == (payload, label)
    assert reader.labels().tolist() == [0, 1, 2, 0, 1]
    write_manifest(root, "imagenet", {"train": 0, "val": 6}, ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"webdataset/val/\*.idx: 5 samples, manifest.json says "
                                         r"val has 6; convert again: make dataset-imagenet"):
        sample_table(cfg, "val")



def test_labels_ask_for_each_shards_label_pages_before_reading_them(tmp_path, monkeypatch):
    """ShardReader.labels reads one page per sample; on a cold disk it must have the reads
    queued (POSIX_FADV_WILLNEED) a shard ahead rather than wait for them one by one."""
    if not hasattr(os, "posix_fadvise"):
        pytest.skip("no posix_fadvise on this platform")
    root = tmp_path / "imagenet"
    (root / fmt.shard_folder_rel("val")).mkdir(parents=True)
    samples = [(f"k{i:03d}", bytes([i]) * 3000, i % 3) for i in range(9)]
    for shard in range(3):
        write_shard(root / fmt.shard_rel("val", shard), samples[3 * shard:3 * shard + 3])
    write_manifest(root, "imagenet", {"train": 0, "val": 9}, ["a", "b", "c"])
    reader = ShardReader(sample_table(DataConfig(dataset="imagenet", root=str(root)), "val"))
    table, events = reader.table, []
    fadvise, pread = os.posix_fadvise, os.pread

    def announce(fd, offset, size, advice):
        events.append(("ask", offset, size))
        return fadvise(fd, offset, size, advice)

    def read(fd, size, offset):
        events.append(("read", offset, size))
        return pread(fd, size, offset)

    monkeypatch.setattr(os, "posix_fadvise", announce)
    monkeypatch.setattr(os, "pread", read)
    assert reader.labels().tolist() == [i % 3 for i in range(9)]
    cls = [(int(o), int(n)) for o, n in zip(table.cls_offset, table.cls_size)]
    assert [(o, n) for kind, o, n in events if kind == "read"] == cls
    for i, member in enumerate(cls):
        asked = events.index(("ask", *member))
        assert asked < events.index(("read", *member))
        shard_ahead = 3 * (i // 3 + 1)  # shard k+1 is asked for before shard k's first read
        if shard_ahead < 9 and i % 3 == 0:
            assert events.index(("ask", *cls[shard_ahead])) < events.index(("read", *member))


def test_shard_index_columns_read_what_the_general_parser_reads(tmp_path):
    """The column-wise parse of the converter's index layout equals the general parser's
    reading; any other layout (members in another order, a third member, a repeated key, a
    number that is not one, a count that differs) is left to the general parser."""
    from pipelines.readers import _index_columns, _index_rows

    samples = [(f"k{i:03d}", bytes([i]) * (100 + 700 * i), i % 3) for i in range(5)]
    write_shard(tmp_path / "shard-000000.tar", samples)
    index = tmp_path / "shard-000000.idx"
    keys, columns = _index_columns(index)
    want_keys, want_columns = _index_rows("shard-000000.tar", index)
    assert keys == want_keys == [key for key, _, _ in samples]
    for got, want in zip(columns, want_columns, strict=True):
        assert got.dtype == np.int64 and got.tolist() == want.tolist()
    lines = index.read_text().splitlines()
    header, first = lines[0], lines[1].split()
    odd = {"cls first": " ".join(first[4:] + first[:4]),
           "third member": lines[1] + " txt 0 1 k000.txt",
           "repeated key": lines[2],
           "not a number": lines[1].replace(first[1], "1e3", 1),
           "negative": lines[1].replace(first[2], "-" + first[2], 1)}
    for why, line in odd.items():
        index.write_text("\n".join([header, line, *lines[2:]]) + "\n")
        assert _index_columns(index) is None, why
    index.write_text("\n".join(["v1.2 6", *lines[1:]]) + "\n")
    assert _index_columns(index) is None
    with pytest.raises(fmt.RecordsError, match="header says 6 samples, lists 5"):
        _index_rows("shard-000000.tar", index)

# ----------------------------------------------------------------------------- build_loader
@pytest.mark.parametrize("kwargs,match", [
    (dict(split="valid"), "split='valid'"),
    (dict(split="train", eval_mode="tencrop"), "eval splits"),
    (dict(split="test", eval_mode="tencrop"), "for ImageNet-style datasets"),
    (dict(split="test", eval_mode="sideways"), "eval_mode='sideways'"),
    (dict(split="test", scale=256), "only used with eval_mode='multiscale'"),
    (dict(split="test", rank=2, world_size=2), "rank=2"),
])
def test_build_loader_refuses(tiny_cifar, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_loader(cifar_cfg(tiny_cifar[0]), device="cpu", **kwargs)


def test_one_request_sets_every_loaders_batch_and_plan(tiny_cifar):
    cfg = cifar_cfg(tiny_cifar[0])
    imagenet = DataConfig(dataset="imagenet", batch_size=8, eval_batch_size=5)
    assert LoaderRequest(cfg, "train", "cpu").batch_size == 16
    assert LoaderRequest(cfg, "val", "cpu").batch_size == 7
    assert LoaderRequest(imagenet, "val", "cpu", eval_mode="tencrop").batch_size == 5
    assert LoaderRequest(imagenet, "val", "cpu", eval_mode="multiscale", scale=9).batch_size == 1
    assert LoaderRequest(cfg, "val", "cpu").stored_split == "train"
    with pytest.raises(dataclasses.FrozenInstanceError):
        LoaderRequest(cfg, "val", "cpu").split = "test"
    for backend in ("native", "torchvision", "synthetic"):
        cfg = cifar_cfg(tiny_cifar[0], backend)
        train, val = build_loader(cfg, "train", "cpu"), build_loader(cfg, "val", "cpu")
        assert isinstance(train, PlannedLoader) and isinstance(val, PlannedLoader)
        assert (len(train), len(val)) == (100 // 16, -(-20 // 7)), backend
        train.set_epoch(1, start=len(train) - 1)
        assert len(list(train)) == 1 and len(list(train)) == len(train), backend


def test_build_loader_refuses_imagenet_multiscale_without_scale(tmp_path):
    cfg = DataConfig(dataset="imagenet", root=str(tmp_path))
    with pytest.raises(ValueError, match="needs scale"):
        build_loader(cfg, "val", "cpu", eval_mode="multiscale")
    with pytest.raises(ValueError, match="data.backend='tfdata'"):
        DataConfig(backend="tfdata")


# ----------------------------------------------------------------------------- loaders
def traced(images: np.ndarray, source: np.ndarray):
    """For a train crop (pad 4) of a tiny-CIFAR image: the (dy, dx, flipped) that reproduces it
    from `source`, or None."""
    padded = np.pad(source.transpose(2, 0, 1), ((0, 0), (4, 4), (4, 4)))
    for flipped in (False, True):
        for dy in range(9):
            for dx in range(9):
                window = padded[:, dy:dy + 32, dx:dx + 32]
                if np.array_equal(images, window[..., ::-1] if flipped else window):
                    return dy, dx, flipped
    return None


def test_native_cifar_train_is_crop_and_flip_of_the_right_images(tiny_cifar):
    root, arrays = tiny_cifar
    cfg = cifar_cfg(root)
    loader = build_loader(cfg, "train", "cpu", seed=4)
    assert len(loader) == 100 // 16
    train_index = split_positions(cfg, "train")
    images, labels = arrays["train"]
    flips, seen = [], []
    for epoch in range(3):
        loader.set_epoch(epoch)
        plan = shard_indices(100, 0, 1, 4, epoch, True, True, 16)
        got = [(to_uint8(x, cfg), y.numpy()) for x, y in loader]
        batch_images = np.concatenate([g[0] for g in got])
        batch_labels = np.concatenate([g[1] for g in got])
        source = train_index[plan]
        assert np.array_equal(batch_labels, labels[source])
        for out, s in zip(batch_images, source):
            trace = traced(out, images[s])
            assert trace is not None
            flips.append(trace[2])
            seen.append(s)
    assert 0.35 < np.mean(flips) < 0.65  # 288 draws
    assert set(seen) <= set(train_index)


def test_native_cifar_eval_and_determinism(tiny_cifar):
    root, arrays = tiny_cifar
    cfg = cifar_cfg(root)
    test = build_loader(cfg, "test", "cpu")
    got = torch.cat([x for x, _ in test])
    assert [len(y) for _, y in test] == [7, 7, 7, 7, 2]
    want = ops.Normalize(cfg, "cpu")(torch.from_numpy(arrays["test"][0]).permute(0, 3, 1, 2))
    torch.testing.assert_close(got, want)
    train = build_loader(cfg, "train", "cpu", seed=1)
    train.set_epoch(2)
    full = list(train)
    train.set_epoch(2, start=3)
    tail = list(train)
    assert len(tail) == len(full) - 3
    for (a, la), (b, lb) in zip(full[3:], tail):
        assert torch.equal(a, b) and torch.equal(la, lb)


@pytest.mark.parametrize("backend", ["native", "torchvision"])
def test_cifar_ddp_shards(tiny_cifar, backend):
    cfg = cifar_cfg(tiny_cifar[0], backend)
    shares = []
    for rank in range(3):
        loader = build_loader(cfg, "train", "cpu", rank=rank, world_size=3, seed=2)
        assert len(loader) == (100 // 3) // 16
        shares.append(sum(len(y) for _, y in loader))
    assert shares == [32, 32, 32]
    val = [torch.cat([x for x, _ in build_loader(cfg, "val", "cpu", rank=r, world_size=3)])
           for r in range(3)]
    whole = torch.cat([x for x, _ in build_loader(cfg, "val", "cpu")])
    assert torch.equal(torch.cat(val), whole)  # contiguous shares in order, nothing dropped


def test_baseline_workers_do_not_change_the_batches(tiny_cifar):
    root, _ = tiny_cifar
    batches = {}
    for workers in (0, 2):
        cfg = cifar_cfg(root, "torchvision")
        cfg.num_workers = workers
        loader = build_loader(cfg, "train", "cpu", seed=5)
        loader.set_epoch(1)
        batches[workers] = list(loader)
    for (a, la), (b, lb) in zip(batches[0], batches[2]):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_baseline_cifar_train_is_crop_and_flip(tiny_cifar):
    root, arrays = tiny_cifar
    cfg = cifar_cfg(root, "torchvision")
    train_index = split_positions(cfg, "train")
    loader = build_loader(cfg, "train", "cpu", seed=4)
    plan = shard_indices(100, 0, 1, 4, 0, True, True, 16)
    images = np.concatenate([to_uint8(x, cfg) for x, _ in loader])
    for out, s in zip(images, train_index[plan]):
        assert traced(out, arrays["train"][0][s]) is not None


@pytest.mark.parametrize("dataset,split,mode,scale,shape", [
    ("cifar10", "train", "center", None, (16, 3, 32, 32)),
    ("imagenet", "train", "center", None, (16, 3, 224, 224)),
    ("imagenet", "val", "tencrop", None, (7, 10, 3, 224, 224)),
    ("imagenet", "val", "multiscale", 384, (1, 3, 384, 512)),
])
def test_synthetic(tmp_path, dataset, split, mode, scale, shape):
    cfg = DataConfig(dataset=dataset, root=str(tmp_path / "none"), backend="synthetic",
                     batch_size=16, eval_batch_size=7)
    loader = build_loader(cfg, split, "cpu", eval_mode=mode, scale=scale)
    expected = {"cifar10": 45000 // 16, "imagenet": 1281167 // 16}[dataset]
    if split == "val":
        expected = 50000 if mode == "multiscale" else -(-50000 // 7)
    assert len(loader) == expected
    loader.set_epoch(0, start=len(loader) - 2)
    batches = list(loader)
    assert len(batches) == 2 and batches[0][0] is batches[1][0]
    images, labels = batches[0]
    assert images.shape == shape and labels.dtype == torch.int64
    flat = images.flatten(0, 1) if images.dim() == 5 else images
    assert flat.is_contiguous(memory_format=torch.channels_last)


def test_synthetic_labels_stay_among_the_records_classes(tmp_path):
    """An ImageNet subset (here 4 classes) is evaluated per class by its manifest's names: the
    synthetic backend draws its labels from those, not from ImageNet's 1000."""
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 48)).save(jpeg, format="JPEG")
    samples = [(f"s{i:03d}", jpeg.getvalue(), i % 4) for i in range(64)]
    root = write_imagenet_records(tmp_path, {"train": samples, "val": samples}, n_classes=4)
    cfg = DataConfig(dataset="imagenet", root=str(root), backend="synthetic", batch_size=64,
                     eval_batch_size=64)
    for split in ("train", "val"):
        _, labels = next(iter(build_loader(cfg, split, "cpu")))
        assert labels.shape == (64,) and labels.min() >= 0 and labels.max() < 4
        assert len(labels.unique()) == 4
    sums = accumulate(torch.softmax(torch.randn(64, 1000), 1), labels, None, classes=4)
    assert sums[4 + 4:].sum() == 64  # every label counted in its class


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_native_device_matches_cpu(pattern_records, tiny_cifar, device):
    """nvJPEG + batched GPU crops vs libjpeg + CPU resize: the same geometry, pixels within 3
    levels mean; CIFAR exact. On the CPU the same set-up compares the CPU with itself."""
    cfg = DataConfig(dataset="imagenet", root=str(pattern_records), batch_size=8,
                     eval_batch_size=4)
    cpu = torch.cat([x for x, _ in build_loader(cfg, "val", "cpu")])
    batches = list(build_loader(cfg, "val", device))
    assert all(x.device.type == device and y.device.type == device for x, y in batches)
    got = torch.cat([x for x, _ in batches]).cpu()
    diff = (ops.unnormalize(got, cfg) - ops.unnormalize(cpu, cfg)).abs() * 255
    assert diff.mean() < 3
    train = build_loader(cfg, "train", device)
    for images, labels in train:
        assert images.device.type == device and images.shape == (8, 3, 224, 224)
        assert images.is_contiguous(memory_format=torch.channels_last)
        assert torch.isfinite(images).all() and labels.device.type == device
    ccfg = cifar_cfg(tiny_cifar[0])
    device_test = torch.cat([x for x, _ in build_loader(ccfg, "test", device)]).cpu()
    cpu_test = torch.cat([x for x, _ in build_loader(ccfg, "test", "cpu")])
    torch.testing.assert_close(device_test, cpu_test)
    images, labels = next(iter(build_loader(ccfg, "train", device)))
    assert images.device.type == device and images.shape == (16, 3, 32, 32)
