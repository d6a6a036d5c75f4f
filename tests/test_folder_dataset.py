"""The folder dataset, end to end: a class-per-folder set of real photos (with what a folder of
one's own photos holds besides plain JPEGs) converted by `tools/convert.py folder`, refused
clearly when it cannot be, and trained by every backend with per-class accuracy by name."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from fixtures import (
    FOLDER_CLASSES,
    FOLDER_PHOTOS,
    folder_oddities,
    make_image_folder,
    small_photo,
)
from pipelines import DataConfig
from pipelines.readers import ShardReader, sample_table
from records import format as fmt
from records.check import verify
from tools.converter.cli import convert
from tools.converter.datasets.folder import held_out, list_splits

CLASSES = sorted(FOLDER_CLASSES)
TINY = ["data.aug.scale_min=36", "data.aug.scale_max=48", "data.aug.crop=32",
        "data.aug.eval_resize=36"]


def stored(root, split: str) -> dict[str, tuple[np.ndarray, int]]:
    """{key: (decoded RGB pixels, label)} of a converted split, read from its shards."""
    reader = ShardReader(sample_table(DataConfig(dataset="folder", root=str(root)), split))
    pictures = {}
    for i, key in enumerate(reader.table.keys):
        jpeg, label = reader.read(i)
        pictures[key] = (np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")), label)
    return pictures


@pytest.fixture(scope="module")
def oddities(tmp_path_factory):
    """(source folder, records) of the oddities folder, in every installed format."""
    import importlib.util

    folder = tmp_path_factory.mktemp("folder")
    src = make_image_folder(folder / "photos", oddities=True)
    formats = ["webdataset"] + (["ffcv"] if importlib.util.find_spec("ffcv") else [])
    with pytest.warns(UserWarning, match="skipped"):
        root = convert("folder", src, folder / "records", formats, workers=2, name="pets",
                       quiet=True)
    return src, root


def test_a_folder_converts_with_its_classes_counts_stats_and_skips(oddities):
    src, root = oddities
    assert root.name == "pets" and verify(root) == []
    manifest = fmt.read_manifest(root, "folder")
    assert manifest["classes"] == CLASSES and manifest["name"] == "pets"
    decodable = sum(reason is None for _, reason in folder_oddities(
        np.random.default_rng(0)).values())
    cat = CLASSES.index("cat")
    want_train = [8 + decodable if i == cat else 8 for i in range(3)]
    assert manifest["splits"]["train"]["per_class"] == want_train
    assert manifest["splits"]["val"]["per_class"] == [2, 2, 2]
    reasons = {s["file"]: s["reason"] for s in manifest["skipped"]}
    expected = {f"train/cat/{name}": why for name, (_, why) in
                folder_oddities(np.random.default_rng(0)).items() if why}
    expected["train/cat/loop.jpg"] = "symbolic link loop"
    assert set(reasons) == set(expected)
    assert all(reasons[name].startswith(why) for name, why in expected.items())
    # mean/std of what was stored (before its JPEG encoding: 1e-3 covers that loss)
    pixels = np.concatenate([p.reshape(-1, 3) for p, _ in stored(root, "train").values()])
    pixels = pixels / 255.0
    np.testing.assert_allclose(manifest["stats"]["mean"], pixels.mean(0), atol=2e-3)
    np.testing.assert_allclose(manifest["stats"]["std"], pixels.std(0), atol=2e-3)


def test_odd_images_are_stored_upright_rgb_and_unclipped(oddities):
    src, root = oddities
    train = stored(root, "train")
    photo = np.asarray(Image.open(src / "train/cat/cmyk.jpg").convert("RGB"), dtype=float)
    exif, _ = train["exif"]  # EXIF orientation 6: shown turned 90 degrees clockwise
    assert exif.shape[:2] == photo.shape[1::-1]
    turned = np.rot90(np.asarray(Image.open(src / "train/cat/exif.jpg").convert("RGB")), -1)
    assert np.abs(exif.astype(float) - turned).mean() < 3
    grey16, _ = train["grey16"]  # 16-bit levels scaled to 8 bits, not clipped to white
    grey8 = np.asarray(Image.open(src / "train/cat/grey.jpeg").convert("RGB"), dtype=float)
    assert grey16.shape == grey8.shape and np.abs(grey16 - grey8).mean() < 3
    for key in ("cmyk", "grey", "palette", "photo"):
        image, label = train[key]
        assert image.shape[2] == 3 and label == CLASSES.index("cat")


def test_without_val_a_seeded_stratified_share_is_held_out(tmp_path):
    src = make_image_folder(tmp_path / "photos", train_per_class=8, val_per_class=None)
    _, classes, splits, how = list_splits(src, 0.1, 0)
    assert classes == CLASSES and how["val"] == "held out of train"
    per_class = {split: [sum(c == name for c, _ in entries) for name in classes]
                 for split, entries in splits.items()}
    assert per_class == {"train": [7, 7, 7], "val": [1, 1, 1]}  # at least one of each class
    files = {split: {e[0] for _, e in entries} for split, entries in splits.items()}
    assert not files["train"] & files["val"] and len(files["train"] | files["val"]) == 24
    again = {e[0] for _, e in list_splits(src, 0.1, 0)[2]["val"]}
    other = {e[0] for _, e in list_splits(src, 0.1, 1)[2]["val"]}
    assert again == files["val"] and other != files["val"]
    assert [held_out(n, 0.1) for n in (1, 2, 9, 10, 15, 40)] == [0, 1, 1, 1, 2, 4]
    root = convert("folder", src, tmp_path / "records", ["webdataset"], workers=1, name="pets",
                   quiet=True, val_fraction=0.25)
    manifest = fmt.read_manifest(root)
    assert manifest["splits"]["val"]["per_class"] == [2, 2, 2]
    assert manifest["settings"]["val_fraction"] == 0.25


def _empty_class(src):
    (src / "train/empty").mkdir()


def _val_only_class(src):
    (src / "val/zebra").mkdir()
    (src / "val/zebra/z.jpg").write_bytes((src / "val/cat").iterdir().__next__().read_bytes())


def _looping_class(src):
    (src / "train/again").symlink_to(src / "train")


def _no_train(src):
    (src / "train").rename(src / "training")


@pytest.mark.parametrize("damage, message", [
    (_empty_class, r"train/empty: empty class folder \(no jpeg/jpg/png/webp files\)"),
    (_val_only_class, r"val/zebra: class 'zebra' is in val/ but not in train/"),
    (_looping_class, r"train/again: a class folder that is a symbolic link loop"),
    (_no_train, r"train: not found; a folder dataset is SRC/train/<class>/"),
])
def test_a_bad_folder_is_refused_before_anything_is_written(tmp_path, damage, message):
    src = make_image_folder(tmp_path / "photos", train_per_class=2, val_per_class=1)
    damage(src)
    with pytest.raises(ValueError, match=message):
        convert("folder", src, tmp_path / "records", workers=1, name="pets", quiet=True)
    assert not (tmp_path / "records").exists()


def test_a_photo_keeps_its_pixels_when_stored_byte_for_byte(tmp_path):
    """A plain RGB JPEG below the size caps is stored as it is: decoding it gives the source."""
    src = make_image_folder(tmp_path / "photos", train_per_class=2, val_per_class=1)
    root = convert("folder", src, tmp_path / "records", ["webdataset"], workers=1, name="p",
                   quiet=True)
    name = sorted((src / "train/rocket").iterdir())[0]
    assert stored(root, "train")[name.stem][0].tobytes() == np.asarray(
        Image.open(name).convert("RGB")).tobytes()
    assert small_photo(FOLDER_PHOTOS["rocket"], np.random.default_rng(1)).mode == "RGB"


BACKENDS = ["native", "torchvision", "synthetic", pytest.param("ffcv", marks=pytest.mark.ffcv),
            pytest.param("dali", marks=pytest.mark.dali)]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_trains_a_folder_and_reports_each_class(oddities, backend, tmp_path):
    from train.run import main

    _, root = oddities
    result = main(["configs/folder_resnet18.yaml", f"data.root={root}", f"data.backend={backend}",
                   *TINY, "data.batch_size=8", "data.eval_batch_size=8", "data.num_workers=1",
                   "schedule.total=2", "schedule.milestones=[]", f"run.out_dir={tmp_path}",
                   "run.name=run", "run.device=cpu", "run.threads=1", "run.log_every=2"])
    assert result.status == "completed"
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["dataset"] == "folder" and summary["reported_split"] == "val"
    assert summary["final"]["val"]["count"] == (8 if backend == "synthetic" else 6)
    accuracy = summary["per_class_accuracy"]
    assert list(accuracy) == CLASSES
    assert all(value is None or 0 <= value <= 100 for value in accuracy.values())
    assert np.isfinite(summary["final"]["val"]["loss"])


def test_evaluate_reports_each_class_by_name(oddities, tmp_path, capsys):
    from train.evaluate import main as evaluate_main
    from train.run import main

    _, root = oddities
    main(["configs/folder_resnet18.yaml", f"data.root={root}", *TINY, "data.batch_size=8",
          "data.num_workers=0", "schedule.total=1", "schedule.milestones=[]",
          f"run.out_dir={tmp_path}", "run.name=run",
          "run.device=cpu", "run.threads=1"])
    result = evaluate_main([str(tmp_path / "run"), "data.num_workers=0", "--mode", "tencrop"])
    accuracy = result["per_class_accuracy"]
    assert list(accuracy) == CLASSES and result["split"] == "val" and result["count"] == 6
    hits = sum(value / 100 * 2 for value in accuracy.values())  # 2 val images per class
    assert hits == pytest.approx(6 * (1 - result["top1_error"] / 100))
    out = capsys.readouterr().out
    assert "per-class accuracy (3 classes):" in out and "coffee mug" in out
    saved = json.loads((tmp_path / "run/eval_tencrop_val.json").read_text())
    assert saved["per_class_accuracy"] == accuracy
