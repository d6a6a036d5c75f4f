"""tools/convert.py's command line and `make dataset-*` as a new user meets them: the help lists
one subcommand per dataset of records/datasets.py and says what each --src takes, and a missing
source or name is one line that names the make variable to set."""
import os
import shutil
import subprocess
import sys

import pytest

from records import datasets
from tools.converter.sources.cifar import download

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_VARIABLES = ("CIFAR10_SRC", "CIFAR100_SRC", "IMAGENET_SRC", "SRC", "NAME")


def clean_env() -> dict:
    """No dataset source in the environment (make exports its variables to the converter)."""
    return {k: v for k, v in os.environ.items() if k not in SOURCE_VARIABLES}


def run(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=env or clean_env())


def convert(*args, env=None) -> subprocess.CompletedProcess:
    return run(sys.executable, "tools/convert.py", *args, env=env)


def test_top_level_help_lists_one_subcommand_per_dataset():
    result = convert("--help")
    assert result.returncode == 0
    for entry in datasets.DATASETS.values():
        assert f"    {entry.name} " in result.stdout, entry.name
    assert "verify" in result.stdout
    assert "RGBImageField" not in result.stdout  # a dataset's details are in its own --help
    assert "RGBImageField" in convert("imagenet", "--help").stdout


@pytest.mark.parametrize("name", list(datasets.DATASETS))
def test_each_src_help_says_what_its_dataset_takes(name):
    entry = datasets.DATASETS[name]
    text = " ".join(convert(name, "--help").stdout.split())  # argparse wraps lines
    assert " ".join(entry.source.split()) in text
    assert f"${entry.src_var}" in text
    if entry.family == "cifar":
        assert "ImageNet" not in text and "ILSVRC" not in text
        assert "downloaded (md5-checked)" in text
    else:
        assert "--src SRC required:" in text and "download" not in text


@pytest.mark.parametrize("name", ["imagenet", "folder"])
def test_a_missing_source_names_the_make_variable(name, tmp_path):
    entry = datasets.DATASETS[name]
    result = convert(name, "--out", str(tmp_path))
    assert result.returncode == 1 and not list(tmp_path.iterdir())
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"set {entry.src_var}=PATH (make dataset-{name} {entry.src_var}=" in result.stderr


def test_a_folder_needs_a_name(tmp_path):
    result = convert("folder", "--src", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "folder needs --name NAME" in result.stderr and "NAME=" in result.stderr
    bad = convert("folder", "--src", str(tmp_path), "--out", str(tmp_path / "out"),
                  "--name", "../up")
    assert bad.returncode == 1 and "got '../up'" in bad.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_dataset_targets_pass_their_variables_and_say_which_is_missing(tmp_path):
    # -o install: the target's recipe alone (install is `make install`'s job, done before)
    missing = run("make", "-s", "-o", "install", "dataset-imagenet", f"DATA={tmp_path}")
    assert missing.returncode != 0
    assert "set IMAGENET_SRC=PATH (make dataset-imagenet IMAGENET_SRC=...)" in missing.stderr
    assert "expected one argument" not in missing.stderr
    given = run("make", "-s", "-o", "install", "dataset-imagenet", f"DATA={tmp_path}",
                f"IMAGENET_SRC={tmp_path / 'nowhere'}")
    assert f"{tmp_path / 'nowhere'}: expected train/ and val/ folders" in given.stderr
    folder = run("make", "-s", "-o", "install", "dataset-folder", f"DATA={tmp_path}",
                 f"SRC={tmp_path}")
    assert "folder needs --name NAME" in folder.stderr
    for name in datasets.DATASETS:
        dry = run("make", "-n", "-o", "install", f"dataset-{name}", f"DATA={tmp_path}")
        assert f"tools/convert.py {name} --out {tmp_path}" in dry.stdout


def test_cifar_without_network_says_which_make_variable_to_set(tmp_path):
    with pytest.raises(RuntimeError, match=r"could not download cifar100 .*make dataset-cifar100 "
                                           r"CIFAR100_SRC=PATH \(or --src PATH\)"):
        download("cifar100", tmp_path, url=(tmp_path / "missing.tar.gz").as_uri())
