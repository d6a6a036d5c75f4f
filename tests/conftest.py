"""Skips for what this machine lacks, and the session-wide fixtures (helpers: fixtures.py)."""
import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CIFAR10_TAR = Path(
    os.environ.get("RESPIPE_CIFAR10_TAR", ROOT.parent / "shared/data/cifar-10-python.tar.gz")
)


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skips = {
        "cuda": (not _cuda(), "no CUDA device"),
        "ffcv": (not _has("ffcv"), "ffcv is not installed (make install)"),
        "dali": (not _has("nvidia.dali"), "nvidia-dali is not installed (make install)"),
    }
    for item in items:
        if "cifar10_tar" in getattr(item, "fixturenames", ()):  # the real data set: slow
            item.add_marker(pytest.mark.slow)
        for mark, (skip, why) in skips.items():
            if skip and mark in item.keywords:
                item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(scope="session")
def cifar10_tar() -> Path:
    """The real CIFAR-10 python tarball ($RESPIPE_CIFAR10_TAR, default ../shared/data/)."""
    if not CIFAR10_TAR.is_file():
        pytest.skip(f"real CIFAR-10 not found at {CIFAR10_TAR} (set RESPIPE_CIFAR10_TAR)")
    return CIFAR10_TAR


@pytest.fixture(scope="session")
def cifar10_records(cifar10_tar, tmp_path_factory) -> Path:
    """The real CIFAR-10 converted once per test session into every format that is installed."""
    from tools.converter.cli import convert

    formats = ["arrays"] + (["ffcv"] if _has("ffcv") else [])
    out = tmp_path_factory.mktemp("records")
    return convert("cifar10", src=cifar10_tar, out=out, formats=formats)


@pytest.fixture(scope="session")
def pattern_records(tmp_path_factory) -> Path:
    """The pattern fixture (fixtures.py) as ImageNet records of every installed format."""
    from fixtures import to_records, write_pattern_folder

    folder = write_pattern_folder(tmp_path_factory.mktemp("pattern_src"))
    return to_records(folder, tmp_path_factory.mktemp("pattern_records"))


@pytest.fixture(scope="session")
def colour_cifar(tmp_path_factory) -> Path:
    """Tiny CIFAR-10 records whose classes are colours (fixtures.write_tiny_cifar)."""
    from fixtures import write_tiny_cifar

    return write_tiny_cifar(tmp_path_factory.mktemp("tiny"))
