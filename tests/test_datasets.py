"""records/datasets.py, the one table of datasets: every entry is whole (a converter with the
converter contract, splits that map onto stored ones, statistics or a manifest to read them
from), and its rules (val held out of train) hold."""
import importlib

import numpy as np
import pytest

from records import datasets


@pytest.mark.parametrize("entry", datasets.DATASETS.values(), ids=lambda e: e.name)
def test_every_entry_is_whole(entry):
    assert entry.family in datasets.FAMILIES and entry.report in entry.served
    assert all(entry.stored_split(split) in entry.stored for split in entry.served)
    assert entry.formats and all(entry.reads(b) in entry.formats
                                 for b in ("native", "ffcv", "dali", "torchvision"))
    assert entry.reads("synthetic") is None
    assert (entry.mean is None) == (entry.std is None)
    assert (entry.image_size is None) == (entry.family == "imagenet")
    converter = importlib.import_module(f"tools.converter.datasets.{entry.converter}")
    assert callable(converter.add_arguments) and callable(converter.convert)
    assert isinstance(converter.NEEDS_SRC, bool)
    assert entry.make_target().startswith(f"make dataset-{entry.name} {entry.src_var}=")


def test_val_is_held_out_of_train_once_and_for_all():
    cifar = datasets.get("cifar10")
    train, val = (cifar.positions(split, 100, 20, 0) for split in ("train", "val"))
    assert len(val) == 20 == cifar.split_count("val", 100, 20)
    assert len(train) == 80 == cifar.split_count("train", 100, 20)
    assert not set(train) & set(val) and set(train) | set(val) == set(range(100))
    assert np.array_equal(val, cifar.positions("val", 100, 20, 0))  # seeded
    assert not np.array_equal(val, cifar.positions("val", 100, 20, 1))
    assert cifar.selection_split(20) == "val" and cifar.selection_split(0) is None
    folder = datasets.get("folder")
    assert np.array_equal(folder.positions("val", 7, 5000, 0), np.arange(7))  # stored val
    assert folder.stored_split("val") == "val" and folder.selection_split(0) == "val"
    with pytest.raises(ValueError, match="has no labelled test set"):
        folder.check_split("test")
    with pytest.raises(ValueError, match="dataset 'mnist': expected one of cifar10, cifar100"):
        datasets.get("mnist")


def test_statistics_come_from_the_table_or_the_manifest():
    assert datasets.stats(datasets.get("imagenet"), None)[0] == (0.485, 0.456, 0.406)
    folder = datasets.get("folder")
    manifest = {"stats": {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}}
    assert datasets.stats(folder, manifest) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    with pytest.raises(ValueError, match="make dataset-folder SRC=... NAME=..."):
        datasets.stats(folder, None)
