"""What a benchmark run measures: the sizes per profile (CPU, GPU, smoke), the backends that
can run here, and the datasets, their inputs checked before anything is timed."""
from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pipelines.spec import AugSpec, DataConfig
from records import format as fmt
from records.datasets import get as dataset_entry

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ("native", "torchvision", "ffcv", "dali")
NEEDS = {"ffcv": "ffcv", "dali": "nvidia.dali"}
DEFAULT_CIFAR = ROOT / "data" / "records" / "cifar10"
PARTS = ("loaders", "e2e", "trainer", "layouts", "convert", "paper")


class BenchError(ValueError):
    """An input the benchmark cannot use; the message names it and the way on."""


@dataclass
class Sizes:
    """How much to run: CPU, GPU and smoke (CI) defaults; --photos/--steps override."""

    photos: int  # train images of the generated set (val: a tenth)
    classes: int
    cifar_batch: int  # loaders alone
    imagenet_batch: int
    batches: int
    warmup: int
    cifar_model: str
    imagenet_model: str
    cifar_e2e_batch: int
    imagenet_e2e_batch: int
    steps: int  # timed e2e steps (CIFAR; ImageNet: imagenet_steps)
    e2e_warmup: int
    rounds: int  # interleaved rounds (trainer vs bare, layouts)
    round_steps: int
    imagenet_crop: int = 224  # smoke: small crops of small rescales, so CPU steps are quick
    imagenet_steps: int | None = None  # None: as CIFAR's (steps, e2e_warmup, round_steps)
    imagenet_warmup: int | None = None
    imagenet_round_steps: int | None = None
    # the paper schedule's projection (tools/benchmark/paper_projection.py): modes, steps
    paper_modes: tuple[str, ...] = ("eager",)
    paper_steps: int = 20
    paper_warmup: int = 3
    # larger photo sets the converter is also timed on (ImageNet's scale, where start-up fades)
    convert_photos: tuple[int, ...] = ()

    def e2e(self, dataset: str) -> tuple[int, int, int]:
        """(warm-up steps, timed steps, steps per interleaved round) for `dataset`."""
        if dataset != "imagenet":
            return self.e2e_warmup, self.steps, self.round_steps
        return (self.imagenet_warmup or self.e2e_warmup, self.imagenet_steps or self.steps,
                self.imagenet_round_steps or self.round_steps)


PROFILES = {
    # 2 CPU cores: ResNet-34 at 224 px trains at a few images/s, so ImageNet runs few steps
    "cpu": Sizes(3000, 100, 512, 64, 20, 3, "resnet32", "resnet34", 128, 16, 12, 4, 5, 4,
                 imagenet_steps=4, imagenet_warmup=2, imagenet_round_steps=2,
                 convert_photos=(20000,)),
    "cuda": Sizes(10000, 100, 512, 256, 50, 10, "resnet32", "resnet34", 128, 256, 100, 30,
                  5, 30, paper_modes=("eager", "graph", "default", "graph+default",
                                      "reduce-overhead"), paper_steps=300, paper_warmup=20,
                  convert_photos=(20000,)),
    "smoke": Sizes(48, 4, 32, 8, 2, 1, "resnet20", "resnet18", 16, 4, 2, 1, 1, 1, 64,
                   paper_steps=2, paper_warmup=1),
}


@dataclass(frozen=True)
class Dataset:
    """One dataset the benchmark runs on, with its batch sizes and model."""

    name: str
    records: Path
    loader_batch: int
    model: str
    e2e_batch: int
    formats: tuple[str, ...]  # those the records were converted to

    def as_dict(self) -> dict:
        return {"name": self.name, "records": str(self.records),
                "loader_batch": self.loader_batch, "model": self.model,
                "e2e_batch": self.e2e_batch}


def available(backend: str, dataset: Dataset | None = None) -> str | None:
    """None if the backend can run here (on the dataset's records), else why not."""
    module = NEEDS.get(backend)
    try:
        if module and importlib.util.find_spec(module) is None:
            return f"{module} not installed"
    except (ImportError, ValueError):
        return f"{module} not installed"
    needed = dataset and dataset_entry(dataset.name).reads(backend)
    if needed and needed not in dataset.formats:
        return (f"{dataset.records} holds no {needed} records (converted to "
                f"{', '.join(dataset.formats)} only)")
    return None


def converted(records: Path) -> tuple[str, tuple[str, ...]]:
    """(dataset name, formats) of a records folder, from its manifest."""
    manifest = fmt.read_manifest(records)
    return manifest["dataset"], tuple(manifest["formats"])


def check_inputs(args) -> None:
    """Refuse at once what would make parts fail after minutes: records that are not there,
    a device that is not there, a photo folder that is not there."""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {args.device}: torch sees no CUDA device here; use "
                         "--device cpu")
    for flag, folder, how in (("--cifar", args.cifar, "make dataset-cifar10 writes them"),
                              ("--imagenet", args.imagenet, "make dataset-imagenet writes "
                               "them, or leave --imagenet out to build the photo set")):
        if folder and not (Path(folder) / fmt.MANIFEST).is_file():
            raise BenchError(f"{flag} {folder}: no records here (no {fmt.MANIFEST}); {how}")
    if args.sources and not Path(args.sources).is_dir():
        raise BenchError(f"--sources {args.sources}: no such folder")


def datasets(args, sizes: Sizes, workers: int, notes: list[str]
             ) -> tuple[list[Dataset], dict | None]:
    """(the datasets to run on, the converter comparison when the photo set was built)."""
    found, conversion = [], None
    cifar = Path(args.cifar) if args.cifar else DEFAULT_CIFAR
    if (cifar / fmt.MANIFEST).is_file():
        name, formats = converted(cifar)
        found.append(Dataset(name, cifar, sizes.cifar_batch, sizes.cifar_model,
                             sizes.cifar_e2e_batch, formats))
    else:
        notes.append(f"no CIFAR records at {cifar}: `make dataset-cifar10` adds them")
    if args.imagenet:
        imagenet = Path(args.imagenet)
    else:
        imagenet, conversion = photo_records(args, sizes, workers, notes)
    found.append(Dataset("imagenet", imagenet, sizes.imagenet_batch, sizes.imagenet_model,
                         sizes.imagenet_e2e_batch, converted(imagenet)[1]))
    return found, conversion


def photo_records(args, sizes: Sizes, workers: int, notes: list[str]):
    """(records folder, converter comparison) of the generated photo set."""
    from tools.benchmark.conversion import compare
    from tools.converter.photos import write_photo_set

    work = Path(args.work)

    def photo_set(n_train: int) -> Path:
        src, n_val = work / f"photos-{n_train}", max(n_train // 10, sizes.classes)
        print(f"photo set: {n_train} train + {n_val} val images in {src} ...", flush=True)
        t0 = time.perf_counter()
        write_photo_set(src, n_train, n_val, sizes.classes, workers=workers,
                        source_folder=args.sources)
        notes.append(f"ImageNet-format set: {n_train} train + {n_val} val photos "
                     f"(tools/converter/photos.py, {time.perf_counter() - t0:.0f} s), "
                     "converted below")
        return src

    src = photo_set(sizes.photos)
    more = (tuple((photo_set(n), work / f"records-{n}") for n in sizes.convert_photos)
            if "convert" in args.only else ())
    formats = ["webdataset"] + (["ffcv"] if available("ffcv") is None else [])
    print(f"converting ({', '.join(formats)}) ...", flush=True)
    conversion = compare(src, work / "records", formats, workers,
                         reference_limit=min(500, sizes.photos), more=more)
    if "convert" not in args.only:
        conversion = None
    return Path(work / "records" / "imagenet"), conversion


def data_config(dataset: str, root, backend: str, batch: int, sizes: Sizes,
                **extra) -> DataConfig:
    aug = {}
    if dataset == "imagenet" and sizes.imagenet_crop != AugSpec.crop:
        crop = sizes.imagenet_crop
        aug = {"aug": AugSpec(scale_min=crop * 9 // 8, scale_max=crop * 3 // 2, crop=crop,
                              eval_resize=crop * 8 // 7)}
    return DataConfig(dataset=dataset, root=str(root), backend=backend, batch_size=batch,
                      eval_batch_size=batch, val_size=0, **aug, **extra)
