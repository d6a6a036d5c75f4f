"""Loaders refuse records that are not what their manifest describes (records/check.py), naming
the file and the command that rewrites them, and name the format a backend needs when records
are missing. Faults are injected into tiny records of every format."""
import shutil

import numpy as np
import pytest

from fixtures import make_cifar_tar, write_cifar_records, write_tiny_cifar, write_tiny_imagenet
from pipelines import DataConfig, build_loader
from pipelines.readers import ShardReader, sample_table
from records import check
from records import format as fmt
from tools.converter.cli import convert

CIFAR_BACKENDS = [pytest.param("native"), pytest.param("torchvision"),
                  pytest.param("dali", marks=pytest.mark.dali),
                  pytest.param("ffcv", marks=pytest.mark.ffcv)]
FIX = r"convert again: make dataset-cifar10 CIFAR10_SRC=\.\.\."


@pytest.fixture(scope="module")
def cifar_records(tmp_path_factory):
    """Tiny CIFAR-10 records in every installed format (arrays, and ffcv when installed)."""
    import importlib.util

    folder = tmp_path_factory.mktemp("cifar")
    tar = make_cifar_tar(folder / "c10.tar.gz", train_per_class=4, test_per_class=2)["path"]
    formats = ["arrays"] + (["ffcv"] if importlib.util.find_spec("ffcv") else [])
    return convert("cifar10", src=tar, out=folder / "records", formats=formats, workers=1,
                   allow_subset=True, quiet=True)


@pytest.fixture
def records(cifar_records, tmp_path):
    """A copy to damage."""
    return shutil.copytree(cifar_records, tmp_path / "cifar10")


def cfg(root, backend="native", **kw) -> DataConfig:
    return DataConfig(root=str(root), backend=backend, val_size=8, batch_size=8,
                      eval_batch_size=8, num_workers=0, **kw)


def overwrite(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def file_of(backend: str, kind: str = "images") -> str:
    if backend == "ffcv":
        return fmt.beton_rel("train")
    return fmt.array_rels("train")[0 if kind == "images" else 1]


def refused(root, backend: str, split: str, why: str) -> None:
    """Building the loader fails with `why` and the command that rewrites the records."""
    with pytest.raises(fmt.RecordsError, match=rf"{why}; {FIX}"):
        build_loader(cfg(root, backend), split, "cpu")


@pytest.mark.parametrize("backend", CIFAR_BACKENDS)
def test_intact_records_load(backend, records):
    images, labels = next(iter(build_loader(cfg(records, backend), "train", "cpu")))
    assert images.shape == (8, 3, 32, 32) and labels.shape == (8,)


@pytest.mark.parametrize("backend", CIFAR_BACKENDS)
def test_zeroed_data_is_refused(backend, records):
    path = records / file_of(backend)
    size = path.stat().st_size
    start = 128 if backend != "ffcv" else size // 2  # .npy: every pixel; .beton: its 2nd half
    overwrite(path, start, bytes(size - start))
    refused(records, backend, "train", rf"{path}: content differs from manifest.json "
                                       r"\(sampled digest\)")


@pytest.mark.parametrize("backend", CIFAR_BACKENDS)
def test_truncated_file_is_refused(backend, records):
    path = records / file_of(backend)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 1000)
    refused(records, backend, "val", rf"{path}: {size - 1000} bytes, manifest.json says {size} "
                                     r"\(truncated or changed\)")


@pytest.mark.parametrize("backend", CIFAR_BACKENDS)
def test_missing_records_name_the_format_and_make_target(backend, records):
    path = records / file_of(backend)
    path.unlink()
    needed = "ffcv" if backend == "ffcv" else "arrays"
    with pytest.raises(FileNotFoundError, match=rf"{path}: missing \(data.backend='{backend}' "
                                                 rf"reads the '{needed}' records\); {FIX}"):
        build_loader(cfg(records, backend), "train", "cpu")
    (records / fmt.MANIFEST).unlink()
    with pytest.raises(FileNotFoundError, match=r"no records here.*make dataset-cifar10"):
        build_loader(cfg(records, backend), "train", "cpu")


def test_changed_labels_are_refused(records):
    path = records / fmt.array_rels("train")[1]
    labels = np.load(path)
    labels[3] = 10
    np.save(path, labels)
    with pytest.raises(fmt.RecordsError, match=rf"{path}: content differs"):
        build_loader(cfg(records), "train", "cpu")


def test_labels_out_of_range_are_refused(tmp_path):
    """Records whose manifest agrees with their files, but with a label no class has."""
    rng = np.random.default_rng(0)
    arrays = {split: (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                      np.arange(n) % 10) for split, n in (("train", 40), ("test", 10))}
    arrays["train"][1][5] = 12
    root = write_cifar_records(tmp_path, arrays)
    path = root / fmt.array_rels("train")[1]
    with pytest.raises(fmt.RecordsError, match=rf"{path}: label 12 at sample 5 is outside "
                                                 rf"\[0, 10\).*{FIX}"):
        build_loader(cfg(root), "train", "cpu")


def test_wrong_array_shape_is_refused(tmp_path):
    root = write_tiny_cifar(tmp_path, n_train=40, n_test=10)
    manifest = fmt.read_manifest(root)
    manifest["splits"]["train"] = {"count": 30, "per_class": [3] * 10}  # 40 stored
    fmt.write_manifest(root, manifest)
    with pytest.raises(fmt.RecordsError, match=r"train_images.npy: holds uint8 \(40, 32, 32, 3\)"
                                                r", manifest.json says uint8 \(30, 32, 32, 3\)"):
        build_loader(cfg(root), "train", "cpu")


def test_full_verify_finds_what_the_sampled_digest_misses(records):
    path = records / fmt.array_rels("train")[0]
    overwrite(path, 5000, b"\x01\x02\x03")  # between two sampled blocks
    build_loader(cfg(records), "train", "cpu")  # the cheap check passes: it samples
    with pytest.raises(fmt.RecordsError, match=rf"{path}: content differs from manifest.json "
                                                rf"\(sha256\)"):
        build_loader(cfg(records, verify="full"), "train", "cpu")
    with pytest.raises(ValueError, match=r"data.verify='sha': expected one of cheap, full"):
        cfg(records, verify="sha")


def relist(root, *rels) -> None:
    """Record files as they are now in the manifest (a converter that wrote them wrong)."""
    manifest = fmt.read_manifest(root)
    manifest["files"].update({rel: fmt.sha256_file(root / rel) for rel in rels})
    manifest["checks"].update(fmt.file_checks(root, rels))
    fmt.write_manifest(root, manifest)


def test_verify_is_the_loaders_checker_in_full_mode(records):
    """`tools/convert.py verify` reports what the loaders refuse, in the same words, for every
    format and split at once."""
    fix = "convert again: make dataset-cifar10 CIFAR10_SRC=..."
    assert check.verify(records) == []
    images, labels = (records / rel for rel in fmt.array_rels("test"))
    overwrite(images, 5000, b"\x01\x02\x03")  # between two sampled blocks: sha256 only
    assert check.verify(records) == [f"{images}: content differs from manifest.json (sha256); "
                                     f"{fix}"]
    np.save(labels, np.zeros(len(np.load(labels)), dtype=np.int64))
    relist(records, *fmt.array_rels("test"))
    assert check.verify(records) == [f"{labels}: per-class counts of test differ from "
                                     f"manifest.json's; {fix}"]


def test_old_records_are_refused_with_the_command(records):
    manifest = fmt.read_manifest(records)
    manifest.pop("checks")
    manifest["version"] = 2
    (records / fmt.MANIFEST).write_text(__import__("json").dumps(manifest))
    with pytest.raises(fmt.RecordsError, match=rf"format version 2, this code reads version "
                                                rf"{fmt.VERSION}; {FIX}"):
        build_loader(cfg(records), "train", "cpu")


# ----------------------------------------------------------------------------- webdataset
@pytest.fixture
def imagenet(tmp_path):
    return write_tiny_imagenet(tmp_path, n=3)


def imagenet_cfg(root, backend="native") -> DataConfig:
    return DataConfig(dataset="imagenet", root=str(root), backend=backend, batch_size=2,
                      eval_batch_size=2, num_workers=0)


@pytest.mark.parametrize("backend", ["native", pytest.param("dali", marks=pytest.mark.dali)])
def test_damaged_or_extra_shard_is_refused(backend, imagenet):
    shard = imagenet / fmt.shard_rel("val", 0)
    build_loader(imagenet_cfg(imagenet, backend), "val", "cpu")
    extra = imagenet / fmt.shard_rel("val", 7)
    shutil.copy(shard, extra)
    with pytest.raises(fmt.RecordsError, match=rf"{extra}: a shard manifest.json does not list"):
        build_loader(imagenet_cfg(imagenet, backend), "val", "cpu")
    extra.unlink()
    size = shard.stat().st_size
    overwrite(shard, size // 2, bytes(size - size // 2))  # its second half
    with pytest.raises(fmt.RecordsError, match=rf"{shard}: content differs.*make dataset-"
                                                rf"imagenet IMAGENET_SRC="):
        build_loader(imagenet_cfg(imagenet, backend), "val", "cpu")


def test_out_of_range_cls_is_refused(tmp_path):
    import io

    from PIL import Image

    from fixtures import write_imagenet_records

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "JPEG")
    samples = [(f"k{i}", buffer.getvalue(), label) for i, label in enumerate((0, 1, 1000))]
    root = write_imagenet_records(tmp_path, {"train": samples[:2], "val": samples},
                                  n_classes=1000)
    reader = ShardReader(sample_table(imagenet_cfg(root), "val"))
    assert reader.read(1)[1] == 1
    with pytest.raises(fmt.RecordsError, match=r"shard-000000.tar: k2.cls holds b'1000', not a "
                                                r"label in \[0, 1000\); convert again"):
        reader.read(2)


def test_sampled_digest_reads_a_few_blocks(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(np.random.default_rng(0).bytes(1 << 20))
    digest = fmt.sampled_digest(path)
    overwrite(path, (1 << 20) - fmt.BLOCK, b"x")  # inside the last sampled block
    assert fmt.sampled_digest(path) != digest
    path.write_bytes(b"short")
    assert len(fmt.sampled_digest(path)) == 32


def test_verify_is_a_config_key():
    from train.config import load_config

    assert load_config("configs/quickstart.yaml", ["data.verify=full"]).data.verify == "full"
    assert load_config("configs/quickstart.yaml").data.verify == "cheap"
    with pytest.raises(ValueError, match=r"data.verify='sha': expected one of cheap, full"):
        load_config("configs/quickstart.yaml", ["data.verify=sha"])


def test_training_on_zeroed_records_stops_before_the_first_step(tmp_path):
    """The issue's case: zeroed pixels used to train to exit 0 without a word (train/run.py
    prints a RecordsError as one `error:` line and exits 1)."""
    from fixtures import tiny_args
    from train.run import main

    root = write_tiny_cifar(tmp_path / "records")
    path = root / fmt.array_rels("train")[0]
    overwrite(path, 128, bytes(path.stat().st_size - 128))
    with pytest.raises(fmt.RecordsError, match=rf"{path}: content differs.*{FIX}"):
        main(tiny_args(root, tmp_path / "runs", "zeroed"))
    assert not list((tmp_path / "runs").glob("*/metrics.jsonl"))
