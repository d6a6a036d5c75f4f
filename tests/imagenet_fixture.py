"""Small ImageNet-format and CIFAR-format fixtures for tests (importable by any test module).

ImageNet fixtures are built from real photos (scikit-image's bundled samples, randomly cropped and
rescaled so the shorter side is 300-700 px, saved as JPEG quality 90) with generated WNID class
folders n00000001, n00000002, ... Both layouts hold the same images:

    make_imagenet_folder(root, classes=4, per_class=6, val_per_class=2, oddities=True) -> root
        root/train/<wnid>/<wnid>_<j>.JPEG, root/val/<wnid>/ILSVRC2012_val_<n>.JPEG
    make_imagenet_tars(root, ...) -> {"root", "train", "val", "devkit"} paths of
        ILSVRC2012_img_train.tar (tar of <wnid>.tar), ILSVRC2012_img_val.tar (flat) and
        ILSVRC2012_devkit_t12.tar.gz (data/meta.mat via scipy.io.savemat + ground truth)

Devkit ILSVRC2012_IDs are deliberately NOT in WNID order (as in the real devkit), so a converter
that labels by devkit id instead of sorted WNID position gets the val labels wrong.

oddities=True adds, to train: a CMYK JPEG, a grayscale JPEG, a PNG named .JPEG, a JPEG with EXIF
orientation 6, a truncated JPEG and random bytes named .JPEG (both undecodable), and a README.txt
(not an image); to val: a CMYK JPEG and a truncated JPEG. `expected(root)` returns what a correct
converter must report (written to root/fixture.json): classes, counts per split and class, the
skipped names for that layout, and the stems of the decodable train oddities whose true picture
is saved losslessly as root/reference/<stem>.png (outside train/ and val/). These fixtures are
a subset of ImageNet: convert them with allow_subset=True.

    make_cifar_tar(path, dataset="cifar10", train_per_class=4, test_per_class=2) -> dict
        a tarball in the official python layout (protocol-2 pickles) with random pixels;
        returns {"path", "classes", "train": (images NHWC uint8, labels), "test": (...)}.

Readers for checking converted records with the libraries' own code:
    read_beton(path) -> [(RGB array, label)]   via ffcv.reader.Reader (no numba JIT)
    read_webdataset(folder) -> [(key, RGB array, label)]   via DALI fn.readers.webdataset (CPU)
"""
from __future__ import annotations

import io
import json
import pickle
import tarfile
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
          "immunohistochemistry", "retina", "colorwheel")
TRAIN_TAR, VAL_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"
DEVKIT, DEVKIT_DIR = "ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_devkit_t12"


@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, name)()


def _random_view(rng: np.random.Generator, gray: bool = False) -> Image.Image:
    src = _photo("camera") if gray else _photo(PHOTOS[rng.integers(len(PHOTOS))])
    h, w = src.shape[:2]
    ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    img = Image.fromarray(src[y:y + ch, x:x + cw])
    short = int(rng.integers(300, 701))
    scale = short / min(img.size)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                      Image.Resampling.BICUBIC)


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _oddity(kind: str, rng: np.random.Generator) -> tuple[bytes, bool, Image.Image | None]:
    """(file bytes, decodable, the RGB/L picture it should decode to, before JPEG loss)."""
    view = _random_view(rng, gray=kind == "gray")
    if kind == "cmyk":
        return _jpeg(view.convert("CMYK")), True, view
    if kind == "gray":
        return _jpeg(view), True, view
    if kind == "png":
        buf = io.BytesIO()
        view.save(buf, "PNG")
        return buf.getvalue(), True, view
    if kind == "exif":  # stored unrotated: converters must not apply the orientation tag
        exif = Image.Exif()
        exif[0x0112] = 6
        return _jpeg(view, exif=exif.tobytes()), True, view
    if kind == "truncated":
        data = _jpeg(view)
        return data[: len(data) // 2], False, None
    if kind == "garbage":
        return rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), False, None
    raise ValueError(kind)


TRAIN_ODDITIES = ("cmyk", "gray", "png", "exif", "truncated", "garbage")
VAL_ODDITIES = ("cmyk", "truncated")


def _plan(classes: int, per_class: int, val_per_class: int, oddities: bool, seed: int) -> dict:
    """Every fixture file: train {wnid: [(name, bytes, ok)]}, val [(wnid, bytes, ok)]."""
    rng = np.random.default_rng(seed)
    wnids = [f"n{i + 1:08d}" for i in range(classes)]
    train = {w: [(f"{w}_{j}.JPEG", _jpeg(_random_view(rng)), True) for j in range(per_class)]
             for w in wnids}
    val = [(w, _jpeg(_random_view(rng)), True) for w in wnids for _ in range(val_per_class)]
    references = {}
    if oddities:
        for i, kind in enumerate(TRAIN_ODDITIES):
            wnid = wnids[i % classes]
            data, ok, reference = _oddity(kind, rng)
            train[wnid].append((f"{wnid}_{kind}.JPEG", data, ok))
            if reference is not None:
                references[f"{wnid}_{kind}"] = reference
        train[wnids[-1]].append(("README.txt", b"not an image\n", False))
        for i, kind in enumerate(VAL_ODDITIES):
            val.append((wnids[i % classes], *_oddity(kind, rng)[:2]))
    order = rng.permutation(len(val))  # val numbering mixes the classes, as in the real set
    val = [val[i] for i in order]
    return {"wnids": wnids, "train": train, "val": val, "references": references}


def _write_references(root: Path, plan: dict) -> None:
    """Lossless pictures of the train oddities, keyed by file stem, beside (not in) the data."""
    if plan["references"]:
        (root / "reference").mkdir(parents=True, exist_ok=True)
    for stem, img in plan["references"].items():
        img.save(root / "reference" / f"{stem}.png")


def _val_name(n: int) -> str:
    return f"ILSVRC2012_val_{n + 1:08d}.JPEG"


def _expected(plan: dict, layout: str) -> dict:
    wnids = plan["wnids"]
    train_pc = [sum(ok for _, _, ok in plan["train"][w]) for w in wnids]
    val_pc = [sum(ok for v, _, ok in plan["val"] if v == w) for w in wnids]
    skipped = []
    for w in wnids:
        for name, _, ok in plan["train"][w]:
            if not ok:
                skipped.append(f"train/{w}/{name}" if layout == "folders"
                               else f"{TRAIN_TAR}:{w}.tar/{name}")
    for n, (w, _, ok) in enumerate(plan["val"]):
        if not ok:
            skipped.append(f"val/{w}/{_val_name(n)}" if layout == "folders"
                           else f"{VAL_TAR}:{_val_name(n)}")
    return {"classes": wnids, "layout": layout, "skipped": sorted(skipped),
            "references": sorted(plan["references"]),
            "splits": {"train": {"count": sum(train_pc), "per_class": train_pc},
                       "val": {"count": sum(val_pc), "per_class": val_pc}}}


def expected(root) -> dict:
    return json.loads((Path(root) / "fixture.json").read_text())


def make_imagenet_folder(root, classes: int = 4, per_class: int = 6, val_per_class: int = 2,
                         oddities: bool = True, devkit: bool = False, seed: int = 0) -> Path:
    root = Path(root)
    plan = _plan(classes, per_class, val_per_class, oddities, seed)
    for wnid, files in plan["train"].items():
        (root / "train" / wnid).mkdir(parents=True, exist_ok=True)
        for name, data, _ in files:
            (root / "train" / wnid / name).write_bytes(data)
    for n, (wnid, data, _) in enumerate(plan["val"]):
        (root / "val" / wnid).mkdir(parents=True, exist_ok=True)
        (root / "val" / wnid / _val_name(n)).write_bytes(data)
    if devkit:
        (root / DEVKIT).write_bytes(_devkit(plan))
    _write_references(root, plan)
    (root / "fixture.json").write_text(json.dumps(_expected(plan, "folders"), indent=1))
    return root


def _tar_bytes(members: list[tuple[str, bytes]], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _devkit(plan: dict) -> bytes:
    import scipy.io

    wnids = plan["wnids"]
    ids = {w: len(wnids) - i for i, w in enumerate(wnids)}  # reversed: ids != WNID order
    fields = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
              "wordnet_height", "num_train_images")
    rows = [(ids[w], w, f"photo class {w}", "a fixture class", 0, np.zeros(0), 0,
             len(plan["train"][w])) for w in wnids]
    # Two non-leaf synsets, as the real meta.mat has (860 of them): never classes.
    rows += [(len(wnids) + 1, "n09999998", "entity", "root", 1, np.array([len(wnids) + 2]), 2, 0),
             (len(wnids) + 2, "n09999999", "object", "inner", len(wnids),
              np.arange(1, len(wnids) + 1), 1, 0)]
    synsets = np.zeros(len(rows), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        synsets[i] = row
    mat = io.BytesIO()
    scipy.io.savemat(mat, {"synsets": synsets})
    truth = "".join(f"{ids[w]}\n" for w, _, _ in plan["val"]).encode()
    return _tar_bytes([(f"{DEVKIT_DIR}/data/meta.mat", mat.getvalue()),
                       (f"{DEVKIT_DIR}/data/ILSVRC2012_validation_ground_truth.txt", truth)],
                      mode="w:gz")


def make_imagenet_tars(root, classes: int = 4, per_class: int = 6, val_per_class: int = 2,
                       oddities: bool = True, seed: int = 0, train_extra=(), class_extra=(),
                       devkit: bool = True) -> dict:
    """train_extra: (name, bytes) members added to the outer train tar; class_extra: added to
    the first class's inner tar (for hostile-archive tests)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    plan = _plan(classes, per_class, val_per_class, oddities, seed)
    inner = []
    for i, (wnid, files) in enumerate(plan["train"].items()):
        extra = list(class_extra) if i == 0 else []
        inner.append((f"{wnid}.tar", _tar_bytes([(n, d) for n, d, _ in files] + extra)))
    paths = {"root": root, "train": root / TRAIN_TAR, "val": root / VAL_TAR,
             "devkit": root / DEVKIT}
    paths["train"].write_bytes(_tar_bytes(inner + list(train_extra)))
    paths["val"].write_bytes(_tar_bytes([(_val_name(n), d) for n, (_, d, _) in
                                         enumerate(plan["val"])]))
    if devkit:
        paths["devkit"].write_bytes(_devkit(plan))
    _write_references(root, plan)
    (root / "fixture.json").write_text(json.dumps(_expected(plan, "archives"), indent=1))
    return paths


CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", "labels", "label_names", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels",
                 "fine_label_names", 100),
}


def make_cifar_tar(path, dataset: str = "cifar10", train_per_class: int = 4,
                   test_per_class: int = 2, seed: int = 0, members: dict | None = None) -> dict:
    """members: {path in tar: bytes} replacing or adding raw members (hostile-input tests)."""
    folder, train_files, test_files, meta, label_key, names_key, k = CIFAR_LAYOUT[dataset]
    rng = np.random.default_rng(seed)
    classes = [f"class_{i:02d}" for i in range(k)]
    out = {"path": Path(path), "classes": classes}
    raw = {}
    for split, files, per in (("train", train_files, train_per_class),
                              ("test", test_files, test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(k), per))
        images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
        out[split] = (images, labels.astype(np.int64))
        rows = images.transpose(0, 3, 1, 2).reshape(len(labels), 3072)
        for name, idx in zip(files, np.array_split(np.arange(len(labels)), len(files))):
            entry = {"batch_label": f"{split} batch", label_key: labels[idx].tolist(),
                     "data": rows[idx], "filenames": [f"img_{i}.png" for i in idx]}
            if dataset == "cifar100":
                entry["coarse_labels"] = (labels[idx] // 5).tolist()
            raw[f"{folder}/{name}"] = pickle.dumps(entry, protocol=2)
    meta_entry = {names_key: classes}
    if dataset == "cifar100":
        meta_entry["coarse_label_names"] = [f"super_{i}" for i in range(20)]
    raw[f"{folder}/{meta}"] = pickle.dumps(meta_entry, protocol=2)
    raw.update(members or {})
    Path(path).write_bytes(_tar_bytes(list(raw.items()), mode="w:gz"))
    return out


def read_beton(path) -> list[tuple[np.ndarray, int]]:
    """Every (RGB image, label) of a .beton through ffcv's own Reader (no numba Loader): raw
    pixels as stored, JPEG samples decoded with PIL."""
    from ffcv.reader import Reader

    reader = Reader(str(path))
    data = np.memmap(path, dtype=np.uint8, mode="r")
    sizes = {int(r["sample_id"]): int(r["size"]) for r in reader.alloc_table}
    out = []
    for i, (image, label) in enumerate(reader.metadata):
        mode, width, height, ptr = (int(v) for v in image)
        blob = data[ptr: ptr + sizes[i]]
        if mode == 1:  # raw
            pixels = np.array(blob[: height * width * 3]).reshape(height, width, 3)
        else:
            pixels = np.asarray(Image.open(io.BytesIO(blob.tobytes())).convert("RGB"))
        out.append((pixels, int(label)))
    return out


def read_webdataset(folder, batch_size: int = 8) -> list[tuple[str, np.ndarray, int]]:
    """Every (key, decoded RGB image, label) of folder/shard-*.tar via DALI's own
    fn.readers.webdataset (with the .idx files) and CPU image decoder, in shard order."""
    from nvidia.dali import fn, pipeline_def, types

    tars = sorted(str(p) for p in Path(folder).glob("shard-*.tar"))
    idx = [t[: -len(".tar")] + ".idx" for t in tars]

    @pipeline_def(batch_size=batch_size, num_threads=1, device_id=None)
    def pipe():
        jpg, cls = fn.readers.webdataset(paths=tars, index_paths=idx, ext=["jpg", "cls"],
                                         missing_component_behavior="error", name="reader")
        return (fn.decoders.image(jpg, device="cpu", output_type=types.RGB), cls,
                fn.get_property(jpg, key="source_info"))

    p = pipe()
    p.build()
    total = p.reader_meta("reader")["epoch_size"]
    out = []
    while len(out) < total:
        images, labels, infos = p.run()
        for i in range(len(images)):
            if len(out) < total:
                info = bytes(np.array(infos.at(i))).decode()
                key = info.rsplit(":", 1)[-1].rsplit("/", 1)[-1].split(".")[0]
                out.append((key, np.array(images.at(i)),
                            int(bytes(np.array(labels.at(i))).decode())))
    return out
