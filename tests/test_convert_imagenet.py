"""tools/convert.py on ImageNet fixtures in both official layouts (folders, archives)."""
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures import expected, make_imagenet_folder, make_imagenet_tars, read_beton, read_webdataset
from records.check import verify
from tools.converter.cli import convert
from tools.converter.sources.safe_tar import UnsafeArchiveError

ROOT = Path(__file__).resolve().parents[1]
MAX_SIDE = {"train": 480, "val": 640}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    base = tmp_path_factory.mktemp("imagenet_src")
    return {"folders": make_imagenet_folder(base / "folders"),
            "archives": make_imagenet_tars(base / "archives")["root"]}


@pytest.fixture(scope="module")
def converted(sources, tmp_path_factory):
    """Each layout converted once into every installed format."""
    import importlib.util

    formats = ["webdataset"] + (["ffcv"] if importlib.util.find_spec("ffcv") else [])
    out = {}
    for layout, src in sources.items():
        dest = tmp_path_factory.mktemp(f"imagenet_{layout}")
        with pytest.warns(UserWarning, match="skipped"):
            out[layout] = convert("imagenet", src, dest, formats=formats, allow_subset=True,
                                  quiet=True)
    return out


def _manifest(root):
    return json.loads((Path(root) / "manifest.json").read_text())


@pytest.mark.parametrize("layout", ["folders", "archives"])
@pytest.mark.timeout(300)
def test_counts_classes_and_skipped(sources, converted, layout):
    want, got = expected(sources[layout]), _manifest(converted[layout])
    assert got["classes"] == want["classes"]
    for split in ("train", "val"):
        assert {k: got["splits"][split][k] for k in ("count", "per_class")} == \
            want["splits"][split]
        assert got["splits"][split]["shards"] >= 2
    assert sorted(s["file"] for s in got["skipped"]) == want["skipped"]
    reasons = {s["file"].rsplit("/", 1)[-1]: s["reason"] for s in got["skipped"]}
    assert "truncated" in reasons["n00000001_truncated.JPEG"]
    assert reasons["README.txt"] == "not an image file extension"
    assert verify(converted[layout]) == []


@pytest.mark.timeout(300)
def test_both_layouts_give_identical_shards(converted):
    folders, archives = _manifest(converted["folders"]), _manifest(converted["archives"])
    shards = {k: v for k, v in folders["files"].items() if k.startswith("webdataset/")}
    assert shards and shards == {k: v for k, v in archives["files"].items()
                                 if k.startswith("webdataset/")}
    assert folders["splits"] == archives["splits"]
    assert "class_names" in archives and "class_names" not in folders  # from the devkit


def _reference(src, key, size):
    ref = Image.open(src / "reference" / f"{key}.png").convert("RGB")
    return np.asarray(ref.resize(size, Image.Resampling.LANCZOS), dtype=np.float64)


@pytest.mark.dali
@pytest.mark.parametrize("layout", ["folders", "archives"])
@pytest.mark.timeout(300)
def test_dali_reads_every_webdataset_shard_as_rgb(sources, converted, layout):
    want = expected(sources[layout])
    for split in ("train", "val"):
        samples = read_webdataset(converted[layout] / "webdataset" / split)
        assert len(samples) == want["splits"][split]["count"]
        labels = [label for _, _, label in samples]
        assert np.bincount(labels, minlength=4).tolist() == want["splits"][split]["per_class"]
        if split == "train":
            assert labels != sorted(labels)  # shuffled once before sharding
            keys = [key for key, _, _ in samples]
            assert [int(k[1:9]) - 1 for k in keys] == labels  # key n0000000<c>_... is class c
        for _, image, _ in samples:
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            assert 0 < min(image.shape[:2]) <= MAX_SIDE[split]
    # Oddities decode to the right RGB picture (a wrong CMYK inversion or an applied EXIF
    # rotation would be off by far more than JPEG noise).
    shards = converted[layout] / "webdataset/train"
    images = {key: image for key, image, _ in read_webdataset(shards)}
    for key in want["references"]:
        image = images[key].astype(np.float64)
        ref = _reference(sources[layout], key, (image.shape[1], image.shape[0]))
        assert np.abs(image - ref).mean() < 6, key
    gray = images["n00000002_gray"].astype(int)
    assert np.abs(gray[..., 0] - gray[..., 1]).max() <= 2


@pytest.mark.ffcv
@pytest.mark.dali
@pytest.mark.timeout(300)
def test_ffcv_holds_the_same_samples_as_the_shards(converted):
    root = converted["archives"]
    for split in ("train", "val"):
        records = read_beton(root / f"ffcv/{split}.beton")
        samples = read_webdataset(root / "webdataset" / split)
        assert [label for _, label in records] == [label for _, _, label in samples]
        for (pixels, _), (key, image, _) in zip(records, samples):
            assert pixels.shape == image.shape, key
            assert np.abs(pixels.astype(float) - image).mean() < 4, key


@pytest.mark.ffcv
@pytest.mark.timeout(300)
def test_ffcv_loader_reads_imagenet_beton(converted):
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    root = converted["folders"]
    loader = Loader(str(root / "ffcv/val.beton"), batch_size=4, num_workers=1,
                    order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines={"image": [CenterCropRGBImageDecoder((224, 224), ratio=224 / 256)],
                               "label": [IntDecoder()]})
    batches = [(np.array(x), np.array(y).reshape(-1)) for x, y in loader]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    assert images.shape == (_manifest(root)["splits"]["val"]["count"], 224, 224, 3)
    assert labels.tolist() == [label for _, label in read_beton(root / "ffcv/val.beton")]
    assert 20 < images.mean() < 235  # real photos, not blank pages


# ---- clear errors on bad sources (nothing converted, no manifest) ----

def _tiny(tmp_path, **kw):
    return make_imagenet_folder(tmp_path / "src", classes=2, per_class=1, val_per_class=1,
                                oddities=False, **kw)


def _fails(src, out, match, exc=ValueError, **kw):
    with pytest.raises(exc, match=match):
        convert("imagenet", src, out, formats=["webdataset"], quiet=True, **kw)
    assert not (Path(out) / "imagenet/manifest.json").exists()


def test_full_imagenet_needs_1000_classes(tmp_path):
    _fails(_tiny(tmp_path), tmp_path / "out",
           r"found 2 train classes, ImageNet-1k has 1000; pass --allow-subset")


def test_devkit_classes_must_all_be_present_unless_subset(tmp_path):
    src = make_imagenet_tars(tmp_path / "src", classes=2, per_class=1, val_per_class=1,
                             oddities=False)["root"]
    _fails(src, tmp_path / "out", r"train classes, ImageNet-1k has 1000")


@pytest.mark.dali
def test_flat_val_folder_is_labelled_from_the_devkit(tmp_path):
    src = make_imagenet_folder(tmp_path / "src", classes=3, per_class=1, val_per_class=2,
                               oddities=False, devkit=True)
    want = {}
    for path in sorted((src / "val").glob("*/*.JPEG")):
        want[path.stem] = int(path.parent.name[1:]) - 1  # n0000000<c> is class c-1
        path.rename(src / "val" / path.name)
    for folder in (src / "val").glob("n*"):
        if folder.is_dir():
            folder.rmdir()
    root = convert("imagenet", src, tmp_path / "out", formats=["webdataset"], allow_subset=True,
                   quiet=True)
    assert {key: label for key, _, label in read_webdataset(root / "webdataset/val")} == want


def test_missing_devkit_is_named(tmp_path):
    src = make_imagenet_tars(tmp_path / "src", classes=2, per_class=1, val_per_class=1,
                             oddities=False, devkit=False)["root"]
    _fails(src, tmp_path / "out", r"ILSVRC2012_devkit_t12\.tar\.gz not found", allow_subset=True)


def test_empty_class_folder_is_named(tmp_path):
    src = _tiny(tmp_path)
    (src / "train/n00000003").mkdir()
    _fails(src, tmp_path / "out", r"train/n00000003: empty class folder", allow_subset=True)


def test_val_class_missing_from_train_is_named(tmp_path):
    src = _tiny(tmp_path)
    (src / "val/n00000009").mkdir()
    stray = src / "val/n00000009/ILSVRC2012_val_00000099.JPEG"
    stray.write_bytes(next((src / "val/n00000001").iterdir()).read_bytes())
    _fails(src, tmp_path / "out", r"val labels must be train classes.*n00000009",
           allow_subset=True)


@pytest.mark.parametrize("where, name", [("outer", "../evil"), ("outer", "/abs.tar"),
                                         ("class", "../evil.JPEG"), ("class", "/abs.JPEG")])
def test_hostile_tar_members_are_refused(tmp_path, where, name):
    extra = {"train_extra" if where == "outer" else "class_extra": [(name, b"x")]}
    src = make_imagenet_tars(tmp_path / "src", classes=2, per_class=1, val_per_class=1,
                             oddities=False, **extra)["root"]
    _fails(src, tmp_path / "out", r"refusing tar member .*(absolute path or '\.\.')",
           exc=UnsafeArchiveError, allow_subset=True)
    assert not (tmp_path / "evil").exists()


def test_strict_turns_a_bad_image_into_an_error(tmp_path):
    src = make_imagenet_folder(tmp_path / "src", classes=2, per_class=1, val_per_class=1)
    (src / "train/n00000002/README.txt").unlink()  # leave only the undecodable images
    _fails(src, tmp_path / "out", r"n0000000\d_(truncated|garbage)\.JPEG: .*\(--strict\)",
           allow_subset=True, strict=True)


# ---- atomic and resumable ----

def _final_files(root):
    return sorted(p for p in Path(root).rglob("*")
                  if p.is_file() and ".tmp-" not in p.name and ".progress" not in p.parts)


@pytest.mark.timeout(300)
def test_killed_conversion_leaves_nothing_complete_and_resumes(sources, tmp_path):
    """SIGKILL mid-run (the test hook sleeps after each committed file), then rerun."""
    out = tmp_path / "out"
    root = out / "imagenet"
    cmd = [sys.executable, "tools/convert.py", "imagenet", "--src", str(sources["folders"]),
           "--out", str(out), "--formats", "webdataset", "--allow-subset", "--shard-size", "4",
           "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "RESPIPE_CONVERT_TEST_SLEEP": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    second = root / "webdataset/train/shard-000001.tar"
    try:
        deadline = time.monotonic() + 200
        while not second.exists():
            assert proc.poll() is None, "converter exited before it could be killed"
            assert time.monotonic() < deadline, "no shard appeared"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (root / "manifest.json").exists()
    before = _final_files(root)
    assert root / "webdataset/train/shard-000000.idx" in before and second in before
    for path in before:  # every final-named file is complete
        if path.suffix == ".tar":
            with tarfile.open(path) as tar:
                assert len(tar.getmembers()) % 2 == 0 and tar.getmembers()
    first_shard = (root / "webdataset/train/shard-000000.tar").stat()

    with pytest.warns(UserWarning, match="skipped"):
        convert("imagenet", sources["folders"], out, formats=["webdataset"], allow_subset=True,
                shard_size=4, workers=1, quiet=True)
    reused = (root / "webdataset/train/shard-000000.tar").stat().st_ino == first_shard.st_ino
    assert reused
    assert verify(root) == []
    manifest = _manifest(root)
    want = expected(sources["folders"])
    assert {s: manifest["splits"][s]["count"] for s in ("train", "val")} == \
        {s: want["splits"][s]["count"] for s in ("train", "val")}
    assert not list(root.rglob("*.tmp-*"))
    result = subprocess.run([sys.executable, "tools/convert.py", "verify", str(root)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_changed_settings_rewrite_and_drop_stale_shards(sources, tmp_path):
    out = tmp_path / "out"
    kwargs = dict(formats=["webdataset"], allow_subset=True, workers=1, quiet=True)
    with pytest.warns(UserWarning):
        root = convert("imagenet", sources["folders"], out, shard_size=4, **kwargs)
    assert _manifest(root)["splits"]["train"]["shards"] == 8  # 30 train files, 4 per shard
    with pytest.warns(UserWarning):
        convert("imagenet", sources["folders"], out, shard_size=10, **kwargs)
    manifest = _manifest(root)
    assert manifest["splits"]["train"]["shards"] == 3
    shards = sorted(p.name for p in (root / "webdataset/train").iterdir())
    assert shards == [f"shard-00000{i}.{ext}" for i in range(3) for ext in ("idx", "tar")]
    assert verify(root) == []


@pytest.mark.ffcv
@pytest.mark.timeout(300)
def test_formats_can_be_added_and_dropped(sources, tmp_path):
    src, out = sources["archives"], tmp_path / "out"
    kwargs = dict(allow_subset=True, workers=1, quiet=True)
    with pytest.warns(UserWarning):
        root = convert("imagenet", src, out, formats=["webdataset"], **kwargs)
    shard = (root / "webdataset/val/shard-000000.tar").stat().st_ino
    with pytest.warns(UserWarning):
        convert("imagenet", src, out, formats=["webdataset", "ffcv"], **kwargs)
    assert (root / "webdataset/val/shard-000000.tar").stat().st_ino == shard  # reused, not redone
    assert {"ffcv/train.beton", "ffcv/val.beton"} <= set(_manifest(root)["files"])
    assert verify(root) == []
    with pytest.warns(UserWarning):
        convert("imagenet", src, out, formats=["ffcv"], **kwargs)
    assert sorted(_manifest(root)["files"]) == ["ffcv/train.beton", "ffcv/val.beton"]
    assert not [p for p in (root / "webdataset").rglob("*") if p.is_file()]
    assert verify(root) == []
