"""Parts of tools/convert.py: image preparation, atomic outputs, shard index, FFCV guard."""
import io
import multiprocessing
import tarfile

import numpy as np
import pytest
from PIL import Image

from records import format as records_format
from tools.converter.sources.images import BadImage, fit_shorter, passthrough_nbytes, prepare
from tools.converter.writers.atomic import OutputDir
from tools.converter.writers.webdataset import ShardWriter


def _encoded(img, fmt="JPEG", **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _photo(size=(500, 360)):
    import skimage.data

    return Image.fromarray(skimage.data.coffee()).resize(size, Image.Resampling.BICUBIC)


@pytest.mark.parametrize("size, cap, want", [
    ((500, 375), 480, (500, 375)), ((1000, 600), 480, (800, 480)), ((600, 1000), 480, (480, 800)),
    ((700, 700), 640, (640, 640)), ((5000, 481), 480, (4990, 480))])
def test_fit_shorter_caps_only_the_shorter_side(size, cap, want):
    assert fit_shorter(size, cap) == want


@pytest.mark.parametrize("mode, fmt, passthrough", [
    ("RGB", "JPEG", True), ("CMYK", "JPEG", False), ("L", "JPEG", False), ("RGB", "PNG", False),
    ("RGBA", "PNG", False), ("P", "PNG", False)])
def test_prepare_gives_rgb_for_every_mode(mode, fmt, passthrough):
    photo = _photo()
    prepared = prepare(_encoded(photo.convert(mode), fmt), 480)
    array = prepared.array()
    assert array.dtype == np.uint8 and array.shape == (360, 500, 3)
    assert prepared.passthrough is passthrough
    if mode in ("RGB", "CMYK", "RGBA"):  # colour survives (CMYK inversion done right)
        assert np.abs(array.astype(float) - np.asarray(photo)).mean() < 6


def test_prepare_resizes_and_drops_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = prepare(_encoded(_photo(), exif=exif.tobytes()), 480)
    assert rotated.image.size == (500, 360) and not rotated.passthrough  # stored unrotated
    big = prepare(_encoded(_photo((1200, 900))), 480)
    assert big.image.size == (640, 480) and not big.passthrough


@pytest.mark.parametrize("kind, reason", [
    ("truncated", "truncated"), ("zeros", "not a recognised image"),
    ("empty", "not a recognised image")])
def test_prepare_rejects_broken_images(kind, reason):
    data = {"truncated": _encoded(_photo())[:3000], "zeros": b"\x00" * 100, "empty": b""}[kind]
    with pytest.raises(BadImage, match=reason):
        prepare(data, 480)


@pytest.mark.parametrize("case", ["rgb", "cmyk", "grey", "png", "exif-rotated", "too-big"])
def test_passthrough_check_agrees_with_prepare(case):
    """The scan's quick check (decoded at 1/8 scale) passes exactly what prepare() would store
    byte for byte, with the full image's raw size."""
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = _photo()
    data = {"rgb": _encoded(photo), "cmyk": _encoded(photo.convert("CMYK")),
            "grey": _encoded(photo.convert("L")), "png": _encoded(photo, "PNG"),
            "exif-rotated": _encoded(photo, exif=exif.tobytes()),
            "too-big": _encoded(_photo((1200, 900)))}[case]
    nbytes, prepared = passthrough_nbytes(data, 480), prepare(data, 480)
    assert (nbytes is not None) is prepared.passthrough is (case == "rgb")
    if nbytes is not None:
        assert nbytes == prepared.array().nbytes == 360 * 500 * 3


@pytest.mark.parametrize("cut", [0.2, 0.5, 0.8, 0.97])
def test_passthrough_check_catches_truncation_as_prepare_does(cut):
    data = _encoded(_photo(), quality=90)
    short = data[:int(len(data) * cut)]
    with pytest.raises(BadImage, match="truncated") as quick:
        passthrough_nbytes(short, 480)
    with pytest.raises(BadImage) as full:
        prepare(short, 480)
    assert str(quick.value) == str(full.value)


@pytest.mark.timeout(60)
def test_scan_feed_keeps_at_most_ahead_results_waiting():
    """Pool.imap keeps every finished result: the feed lets workers run only `ahead` tasks past
    the results taken, and leaving early does not leave the pool's task thread waiting."""
    import time
    from multiprocessing.pool import ThreadPool

    from tools.converter.writers.image_sets import _Bounded

    started, got = [], []

    def work(i):
        started.append(i)
        return i

    with ThreadPool(2) as pool, _Bounded(list(range(60)), 5) as feed:
        for result in feed.taken(pool.imap(work, feed)):
            time.sleep(0.005)  # a slow shard writer: unbounded workers would finish all 60
            assert len(started) <= len(got) + 1 + 5
            got.append(result)
    assert got == list(range(60))
    with ThreadPool(2) as pool, _Bounded(list(range(60)), 5) as feed:
        for result in feed.taken(pool.imap(work, feed)):
            if result == 10:
                break  # the with-exit must not hang on the task thread


def test_shard_index_points_at_each_member(tmp_path):
    out = OutputDir(tmp_path / "ds", "fp")
    shard = ShardWriter(out, "webdataset/train/shard-000000.tar")
    payloads = {f"key{i}": bytes([i]) * (100 + 700 * i) for i in range(3)}
    for i, (key, data) in enumerate(payloads.items()):
        shard.add(key, data, label=i * 7)
    shas = shard.commit()
    assert set(shas) == {"webdataset/train/shard-000000.tar", "webdataset/train/shard-000000.idx"}
    tar_path, idx_path = (tmp_path / "ds" / rel for rel in sorted(shas, reverse=True))
    assert len(records_format.read_shard_index(idx_path)) == 3
    assert records_format.shard_index_count(idx_path) == 3
    raw = tar_path.read_bytes()
    for line, (key, data) in zip(idx_path.read_text().splitlines()[1:], payloads.items()):
        jpg_ext, jpg_off, jpg_size, jpg_name, cls_ext, cls_off, cls_size, cls_name = line.split()
        assert (jpg_ext, jpg_name, cls_ext, cls_name) == ("jpg", f"{key}.jpg", "cls", f"{key}.cls")
        assert raw[int(jpg_off): int(jpg_off) + int(jpg_size)] == data
        assert raw[int(cls_off): int(cls_off) + int(cls_size)].decode().isdigit()
    with tarfile.open(tar_path) as tar:
        assert [m.name for m in tar] == [f"{k}.{e}" for k in payloads for e in ("jpg", "cls")]
    out.close()


def test_output_dir_is_locked_and_checks_sha(tmp_path):
    out = OutputDir(tmp_path / "ds", "fp")
    with pytest.raises(RuntimeError, match="being converted by another process"):
        OutputDir(tmp_path / "ds", "fp")
    tmp = out.tmp_path("a/b.bin")
    tmp.write_bytes(b"hello")
    out.commit("a/b.bin", tmp)
    assert out.done("a/b.bin")["size"] == 5
    (tmp_path / "ds/a/b.bin").write_bytes(b"hellO")
    assert out.done("a/b.bin") is None
    out.close()
    assert OutputDir(tmp_path / "ds", "other").done("a/b.bin") is None  # other settings


class _Boom:
    def __len__(self):
        return 40

    def __getitem__(self, i):
        if i == 13:
            raise ValueError("boom at 13")
        return np.zeros((8, 8, 3), np.uint8), 0


@pytest.mark.ffcv
@pytest.mark.timeout(120)
def test_ffcv_worker_error_raises_instead_of_hanging(tmp_path):
    from tools.converter.writers.ffcv import write_beton

    out = OutputDir(tmp_path / "ds", "fp")
    with pytest.raises(RuntimeError, match=r"FFCV writer failed .*sample 13: ValueError: boom"):
        write_beton(out, "ffcv/train.beton", _Boom(), workers=2)
    assert not (tmp_path / "ds/ffcv/train.beton").exists()
    assert not multiprocessing.active_children()
    out.close()
