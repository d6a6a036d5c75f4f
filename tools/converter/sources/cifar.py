"""CIFAR-10/100 from the official python tarball, via a pickle loader that only builds arrays."""
from __future__ import annotations

import hashlib
import io
import pickle
import shutil
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from records import datasets

from .safe_tar import members


@dataclass(frozen=True)
class CifarFormat:
    name: str
    url: str
    md5: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str

    @property
    def num_classes(self) -> int:
        return datasets.get(self.name).classes


FORMATS = {
    "cifar10": CifarFormat(
        "cifar10", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta",
        "labels", "label_names"),
    "cifar100": CifarFormat(
        "cifar100", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python",
        ("train",), ("test",), "meta", "fine_labels", "fine_label_names"),
}


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    pass


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class ArrayUnpickler(pickle.Unpickler):
    """Allows exactly what a CIFAR batch needs: numpy array reconstruction (and `_codecs.encode`,
    which protocol-2 pickles use for bytes); every other global is refused by name."""

    def __init__(self, file, source: str):
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module, name):
        if (module, name) in (("numpy.core.multiarray", "_reconstruct"),
                              ("numpy._core.multiarray", "_reconstruct")):
            return _reconstruct()
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):
            import _codecs

            return _codecs.encode
        raise UnsafePickleError(
            f"{self.source}: refusing to unpickle {module}.{name} "
            "(a CIFAR batch may only contain numpy arrays, lists, strings and numbers)"
        )


def load_pickle(data: bytes, source: str) -> dict:
    try:
        obj = ArrayUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError) as err:
        raise ValueError(f"{source}: not a valid CIFAR pickle ({type(err).__name__}: {err})") \
            from None
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: expected a dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


@dataclass
class CifarData:
    classes: list[str]
    images: dict[str, np.ndarray]  # split -> uint8 (N, 32, 32, 3) HWC RGB
    labels: dict[str, np.ndarray]  # split -> int64 (N,)


def _batch(entry: dict, fmt: CifarFormat, source: str) -> tuple[np.ndarray, np.ndarray]:
    for key in ("data", fmt.label_key):
        if key not in entry:
            raise ValueError(f"{source}: missing key {key!r} (has {sorted(entry)})")
    data, labels = entry["data"], np.asarray(entry[fmt.label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        raise ValueError(f"{source}: 'data' must be uint8 (N, 3072), got "
                         f"{getattr(data, 'dtype', type(data))} {getattr(data, 'shape', '')}")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise ValueError(f"{source}: {fmt.label_key!r} must be {len(data)} integers, "
                         f"got {labels.dtype} {labels.shape}")
    bad = (labels < 0) | (labels >= fmt.num_classes)
    if bad.any():
        raise ValueError(f"{source}: label {labels[bad][0]} out of range 0..{fmt.num_classes - 1}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def read_cifar(dataset: str, tar_path: Path, allow_subset: bool = False) -> CifarData:
    """Read and validate by structure: shapes, label ranges, class names, and (unless
    `allow_subset`) the official counts: 50,000/10,000 images, equal per class."""
    fmt = FORMATS[dataset]
    wanted = {f"{fmt.folder}/{f}" for f in (*fmt.train_files, *fmt.test_files, fmt.meta_file)}
    found: dict[str, dict] = {}
    try:
        with tarfile.open(tar_path, "r|*") as tar:
            for member in members(tar, str(tar_path)):
                if member.name in wanted and member.isfile():
                    source = f"{tar_path}:{member.name}"
                    found[member.name] = load_pickle(tar.extractfile(member).read(), source)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ValueError(f"{tar_path}: not a readable {dataset} tarball ({err})") from None
    missing = sorted(wanted - set(found))
    if missing:
        raise ValueError(f"{tar_path}: missing {', '.join(missing)} (not the {dataset} python "
                         f"tarball from {fmt.url}?)")
    meta_src = f"{tar_path}:{fmt.folder}/{fmt.meta_file}"
    classes = found[f"{fmt.folder}/{fmt.meta_file}"].get(fmt.names_key)
    if not isinstance(classes, list) or len(classes) != fmt.num_classes:
        raise ValueError(f"{meta_src}: {fmt.names_key!r} must list {fmt.num_classes} names")
    out = CifarData([str(c) for c in classes], {}, {})
    for split, files in (("train", fmt.train_files), ("test", fmt.test_files)):
        parts = [_batch(found[f"{fmt.folder}/{f}"], fmt, f"{tar_path}:{fmt.folder}/{f}")
                 for f in files]
        out.images[split] = np.concatenate([p[0] for p in parts])
        out.labels[split] = np.concatenate([p[1] for p in parts])
        if not allow_subset:
            _check_full(out.labels[split], split, fmt, tar_path)
    return out


def _check_full(labels: np.ndarray, split: str, fmt: CifarFormat, tar_path: Path) -> None:
    want = datasets.get(fmt.name).counts[split]
    per_class = np.bincount(labels, minlength=fmt.num_classes)
    if len(labels) != want or (per_class != want // fmt.num_classes).any():
        raise ValueError(
            f"{tar_path}: {split} has {len(labels)} images, per class {per_class.min()}.."
            f"{per_class.max()}; official {fmt.name} has {want}, {want // fmt.num_classes} per "
            "class (pass --allow-subset to convert a partial copy)"
        )


def download(dataset: str, dest_dir: Path, url: str | None = None) -> Path:
    """Fetch the official tarball into dest_dir (md5-checked); reuse a verified earlier copy."""
    fmt = FORMATS[dataset]
    url = url or fmt.url
    dest = dest_dir / Path(fmt.url).name
    if dest.is_file() and _md5(dest) == fmt.md5:
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as f:
            shutil.copyfileobj(resp, f, 1 << 20)
    except (urllib.error.URLError, OSError, ValueError) as err:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(
            f"could not download {dataset} from {url} ({err}); download "
            f"{Path(fmt.url).name} yourself and pass it: {_pass_it(dataset)}"
        ) from None
    md5 = _md5(tmp)
    if md5 != fmt.md5:
        tmp.unlink()
        raise RuntimeError(f"{url}: md5 {md5} != official {fmt.md5}; pass a local tarball: "
                           f"{_pass_it(dataset)}")
    tmp.replace(dest)
    return dest


def _pass_it(dataset: str) -> str:
    """How to give the converter a tarball, with make and without."""
    return f"{datasets.get(dataset).make_target(src='PATH')} (or --src PATH)"


def _md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()
