"""tools/convert.py on CIFAR: tiny generated tarballs, hostile input, and the real CIFAR-10."""
import io
import json
import os
import pickle
import tarfile

import numpy as np
import pytest

from fixtures import make_cifar_tar, read_beton
from records import format as fmt
from records.check import verify
from tools.converter.cli import convert, main
from tools.converter.sources.cifar import UnsafePickleError, download
from tools.converter.sources.safe_tar import UnsafeArchiveError

CIFAR10_TRAIN_MEAN = (0.4914, 0.4822, 0.4465)


def _load_npy(root, split):
    return tuple(np.load(root / rel) for rel in fmt.array_rels(split))


def _ffcv_loader_arrays(path, batch_size=64):
    """All (images, labels) of a raw .beton through ffcv's Loader, in file order."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    loader = Loader(str(path), batch_size=batch_size, num_workers=1, order=OrderOption.SEQUENTIAL,
                    drop_last=False, pipelines={"image": [SimpleRGBImageDecoder()],
                                                "label": [IntDecoder()]})
    images, labels = zip(*((np.array(x), np.array(y).reshape(-1)) for x, y in loader))
    return np.concatenate(images), np.concatenate(labels)


@pytest.mark.ffcv
@pytest.mark.timeout(240)
def test_tiny_cifar10_round_trip_is_lossless(tmp_path):
    src = make_cifar_tar(tmp_path / "c10.tar.gz", "cifar10", train_per_class=5, test_per_class=3)
    root = convert("cifar10", src["path"], tmp_path / "out", allow_subset=True, quiet=True)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["classes"] == src["classes"]
    assert manifest["splits"]["train"] == {"count": 50, "per_class": [5] * 10}
    assert manifest["splits"]["test"] == {"count": 30, "per_class": [3] * 10}
    assert manifest["skipped"] == []
    assert sorted(manifest["files"]) == sorted(
        rel for split in ("train", "test")
        for rel in (*fmt.array_rels(split), fmt.beton_rel(split)))
    assert manifest["formats"] == ["arrays", "ffcv"]
    assert verify(root) == []
    for split in ("train", "test"):
        images, labels = _load_npy(root, split)
        assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(images, src[split][0])
        np.testing.assert_array_equal(labels, src[split][1])
    # FFCV's own Loader: pixels equal, same order.
    images, labels = _ffcv_loader_arrays(root / "ffcv/train.beton")
    np.testing.assert_array_equal(images, src["train"][0])
    np.testing.assert_array_equal(labels, src["train"][1])


@pytest.mark.ffcv
@pytest.mark.timeout(180)
def test_tiny_cifar100_fine_labels(tmp_path):
    src = make_cifar_tar(tmp_path / "c100.tar.gz", "cifar100", train_per_class=2,
                         test_per_class=1)
    root = convert("cifar100", src["path"], tmp_path / "out", allow_subset=True, quiet=True)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["dataset"] == "cifar100" and len(manifest["classes"]) == 100
    assert manifest["classes"] == src["classes"]
    assert manifest["splits"]["train"] == {"count": 200, "per_class": [2] * 100}
    for split in ("train", "test"):
        images, labels = _load_npy(root, split)
        np.testing.assert_array_equal(images, src[split][0])
        np.testing.assert_array_equal(labels, src[split][1])  # fine, not coarse, labels
        records = read_beton(root / f"ffcv/{split}.beton")
        np.testing.assert_array_equal(np.stack([r[0] for r in records]), src[split][0])
        np.testing.assert_array_equal([r[1] for r in records], src[split][1])


def test_official_counts_are_required_without_allow_subset(tmp_path):
    src = make_cifar_tar(tmp_path / "c10.tar.gz")
    with pytest.raises(ValueError, match=r"train has 40 images.*50000.*--allow-subset"):
        convert("cifar10", src["path"], tmp_path / "out", formats=["arrays"], quiet=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("entry, message", [
    ({"data": np.zeros((4, 3071), np.uint8), "labels": [0, 1, 2, 3]}, r"'data' must be uint8"),
    ({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 10]}, r"label 10 out of range"),
    ({"data": np.zeros((4, 3072), np.float32), "labels": [0, 1, 2, 3]}, r"'data' must be uint8"),
    ({"labels": [0]}, r"missing key 'data'"),
])
def test_malformed_batch_is_named(tmp_path, entry, message):
    bad = {"cifar-10-batches-py/data_batch_3": pickle.dumps(entry, protocol=2)}
    src = make_cifar_tar(tmp_path / "c10.tar.gz", members=bad)
    with pytest.raises(ValueError, match=message) as excinfo:
        convert("cifar10", src["path"], tmp_path / "out", formats=["arrays"], allow_subset=True,
                quiet=True)
    assert "cifar-10-batches-py/data_batch_3" in str(excinfo.value)


def test_corrupt_pickle_is_named(tmp_path, capsys):
    bad = {"cifar-10-batches-py/test_batch": pickle.dumps({"data": 1}, protocol=2)[:-5]}
    src = make_cifar_tar(tmp_path / "c10.tar.gz", members=bad)
    assert main(["cifar10", "--src", str(src["path"]), "--out", str(tmp_path / "out"),
                 "--formats", "arrays", "--allow-subset"]) == 1
    assert "test_batch: not a valid CIFAR pickle" in capsys.readouterr().err


class _Evil:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, capfd):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"data": _Evil(f"echo pwned; touch {marker}"), "labels": [0]},
                           protocol=2)
    src = make_cifar_tar(tmp_path / "c10.tar.gz",
                         members={"cifar-10-batches-py/data_batch_1": payload})
    with pytest.raises(UnsafePickleError, match=r"data_batch_1: refusing to unpickle posix\.sys"):
        convert("cifar10", src["path"], tmp_path / "out", allow_subset=True, quiet=True)
    assert not marker.exists()
    assert "pwned" not in capfd.readouterr().out
    assert not (tmp_path / "out").exists()  # validated before any output is created


@pytest.mark.parametrize("name", ["../evil", "/abs", "cifar-10-batches-py/../../evil"])
def test_path_traversal_member_is_refused(tmp_path, name):
    src = make_cifar_tar(tmp_path / "c10.tar.gz", members={name: b"x"})
    with pytest.raises(UnsafeArchiveError, match=r"refusing tar member"):
        convert("cifar10", src["path"], tmp_path / "out", formats=["arrays"], allow_subset=True,
                quiet=True)
    assert not (tmp_path / "out").exists()


def test_download_failure_says_to_pass_src(tmp_path):
    with pytest.raises(RuntimeError, match=r"could not download cifar10.*--src"):
        download("cifar10", tmp_path, url="http://127.0.0.1:9/cifar-10-python.tar.gz")
    assert not list(tmp_path.iterdir())


def test_download_md5_is_checked(tmp_path):
    src = make_cifar_tar(tmp_path / "fake.tar.gz")
    with pytest.raises(RuntimeError, match=r"md5 .* != official c58f30108f718f92721af3b95e74349a"):
        download("cifar10", tmp_path / "dl", url=src["path"].as_uri())
    assert not list((tmp_path / "dl").iterdir())


def test_verify_cli_names_a_corrupted_file(tmp_path, capsys):
    src = make_cifar_tar(tmp_path / "c10.tar.gz")
    assert main(["cifar10", "--src", str(src["path"]), "--out", str(tmp_path / "out"),
                 "--formats", "arrays", "--allow-subset"]) == 0
    assert "cifar10: 60 images" in capsys.readouterr().out
    root = tmp_path / "out/cifar10"
    assert main(["verify", str(root)]) == 0
    with open(root / "arrays/test_images.npy", "r+b") as f:
        f.seek(-1, os.SEEK_END)
        byte = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([byte[0] ^ 1]))
    capsys.readouterr()
    assert main(["verify", str(root)]) == 1
    assert ("arrays/test_images.npy: content differs from manifest.json (sampled digest); "
            "convert again: make dataset-cifar10") in capsys.readouterr().err


def test_tarball_members_stream_in_any_order(tmp_path):
    """The reader must not depend on member order (the real tarball is not sorted)."""
    src = make_cifar_tar(tmp_path / "c10.tar.gz")
    with tarfile.open(src["path"]) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    shuffled = tmp_path / "shuffled.tar.gz"
    with tarfile.open(shuffled, "w:gz") as tar:
        for m, data in reversed(members):
            tar.addfile(m, io.BytesIO(data))
    root = convert("cifar10", shuffled, tmp_path / "out", formats=["arrays"], allow_subset=True,
                   quiet=True)
    np.testing.assert_array_equal(_load_npy(root, "train")[0], src["train"][0])


# ---- the real CIFAR-10 (skipped when /work/shared/data is absent) ----

def test_real_cifar10_counts_and_mean(cifar10_records):
    manifest = json.loads((cifar10_records / "manifest.json").read_text())
    assert manifest["splits"]["train"] == {"count": 50000, "per_class": [5000] * 10}
    assert manifest["splits"]["test"] == {"count": 10000, "per_class": [1000] * 10}
    assert manifest["classes"][:3] == ["airplane", "automobile", "bird"]
    images, labels = _load_npy(cifar10_records, "train")
    assert images.shape == (50000, 32, 32, 3)
    np.testing.assert_allclose(images.mean(axis=(0, 1, 2)) / 255, CIFAR10_TRAIN_MEAN, atol=1e-3)
    assert np.bincount(labels).tolist() == [5000] * 10


@pytest.mark.ffcv
@pytest.mark.timeout(300)
def test_real_cifar10_ffcv_loader_mean(cifar10_records):
    images, labels = _ffcv_loader_arrays(cifar10_records / "ffcv/train.beton", batch_size=1000)
    assert images.shape == (50000, 32, 32, 3)
    np.testing.assert_allclose(images.mean(axis=(0, 1, 2)) / 255, CIFAR10_TRAIN_MEAN, atol=1e-3)
    np.testing.assert_array_equal(labels, np.load(cifar10_records / "arrays/train_labels.npy"))
