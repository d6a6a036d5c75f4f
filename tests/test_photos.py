"""tools/converter/photos.py: an ImageNet-format set that tools/convert.py reads, at ImageNet's
sizes, the same for the same seed."""
import numpy as np
from PIL import Image

from tools.converter.photos import imagenet_size, write_photo_set
from tools.converter.sources.imagenet import load_source


def test_photo_set_is_imagenet_format_and_deterministic(tmp_path):
    a = write_photo_set(tmp_path / "a", n_train=24, n_val=6, classes=3, workers=1)
    b = write_photo_set(tmp_path / "b", n_train=24, n_val=6, classes=3, workers=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*.JPEG"))
    assert len(files) == 30
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    source = load_source(a, allow_subset=True)
    assert source.classes == ["n00000001", "n00000002", "n00000003"]
    assert [len(source.splits[s]) for s in ("train", "val")] == [24, 6]
    with Image.open(a / files[0]) as img:
        assert img.format == "JPEG" and img.mode == "RGB"


def test_sizes_follow_imagenet():
    rng = np.random.default_rng(0)
    sizes = np.array([imagenet_size(rng) for _ in range(4000)])
    width, height = sizes.mean(0)
    assert 380 < width < 430 and 320 < height < 375  # ImageNet: about 400 x 350
    assert sizes.max() == 500 and (sizes[:, 0] > sizes[:, 1]).mean() > 0.7
