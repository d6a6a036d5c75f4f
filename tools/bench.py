"""Where the time goes, in one run: every data backend alone (train and eval) beside the
torchvision DataLoader, training end to end through train.loop.train_one_epoch against the
synthetic upper bound, the trainer against a bare eager loop, channels_last against contiguous,
and the ImageNet converter against a one-process PIL reference.

  make bench                                      # everything, from nothing but `make install`
  python tools/bench.py [--cifar DIR] [--imagenet DIR] [--smoke] [...]

Without --imagenet it builds an ImageNet-format set from real photos (tools/converter/photos.py)
under --work and converts it (that conversion is the converter benchmark). CIFAR-10 is used when
converted (--cifar, default data/records/cifar10 if there). Writes
bench/results/<machine>-<date>.{json,md,png} with the device, versions, load average before and
after, and this exact command. On a busy machine the numbers are low and noisy: the ratios from
interleaved rounds (trainer ÷ bare loop, layouts) hold up best.
"""
from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402

from pipelines.spec import AugSpec, DataConfig  # noqa: E402
from records import format as fmt  # noqa: E402
from tools.benchmark import measure, report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("native", "torchvision", "ffcv", "dali")
NEEDS = {"ffcv": "ffcv", "dali": "nvidia.dali"}
DEFAULT_CIFAR = ROOT / "data" / "records" / "cifar10"


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

    def e2e(self, dataset: str) -> tuple[int, int, int]:
        """(warm-up steps, timed steps, steps per interleaved round) for `dataset`."""
        if dataset != "imagenet":
            return self.e2e_warmup, self.steps, self.round_steps
        return (self.imagenet_warmup or self.e2e_warmup, self.imagenet_steps or self.steps,
                self.imagenet_round_steps or self.round_steps)


PROFILES = {
    # 2 CPU cores: ResNet-34 at 224 px trains at a few images/s, so ImageNet runs few steps
    "cpu": Sizes(3000, 100, 512, 64, 20, 3, "resnet32", "resnet34", 128, 16, 12, 4, 5, 4,
                 imagenet_steps=4, imagenet_warmup=2, imagenet_round_steps=2),
    "cuda": Sizes(10000, 100, 512, 256, 50, 10, "resnet32", "resnet34", 128, 256, 100, 30,
                  5, 30),
    "smoke": Sizes(48, 4, 32, 8, 2, 1, "resnet20", "resnet18", 16, 4, 2, 1, 1, 1, 64),
}


def available(backend: str) -> str | None:
    """None if the backend can run here, else why not."""
    module = NEEDS.get(backend)
    try:
        if module and importlib.util.find_spec(module) is None:
            return f"{module} not installed"
    except (ImportError, ValueError):
        return f"{module} not installed"
    return None


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    add = parser.add_argument
    add("--cifar", help="CIFAR-10/100 records (tools/convert.py output); default "
        f"{DEFAULT_CIFAR.relative_to(ROOT)} when converted")
    add("--imagenet", help="ImageNet records; default: build the photo set under --work")
    add("--work", default=str(ROOT / "build" / "bench"), help="photo set and its records")
    add("--backends", default=",".join(BACKENDS))
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add("--workers", type=int, default=None, help="data.num_workers (default: all cores)")
    add("--smoke", action="store_true", help="tiny sizes: checks that every part runs (CI)")
    add("--only", default="loaders,e2e,trainer,layouts,convert",
        help="comma list of parts to run")
    add("--photos", type=int, help="train images of the generated set")
    add("--sources", help="folder of photos for the set (default: scikit-image's)")
    add("--steps", type=int, help="timed e2e steps")
    add("--amp", default="bf16", help="run.amp of the e2e runs (CUDA only)")
    add("--compile", default="false", help="run.compile of the e2e runs")
    add("--no-channels-last", action="store_true", help="data.channels_last=false")
    add("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    add("--out", default=str(ROOT / "bench" / "results"))
    add("--name", help="results file stem (default <machine>-<date>)")
    add("--note", action="append", default=[], help="free text saved with the results")
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(args.backends) - set(BACKENDS))
    if unknown:
        parser.error(f"--backends: unknown {unknown}; choose from {', '.join(BACKENDS)}")
    args.only = {p.strip() for p in args.only.split(",") if p.strip()}
    parts = {"loaders", "e2e", "trainer", "layouts", "convert"}
    if args.only - parts:
        parser.error(f"--only: unknown {sorted(args.only - parts)}; choose from {sorted(parts)}")
    args.compile = {"false": False, "true": "default"}.get(args.compile.lower(), args.compile)
    return args


def attempt(row: dict, what: str, work) -> dict:
    """row updated with work()'s result, or with a note saying why it failed (one failing
    backend must not hide the others)."""
    print(f"{what} ...", flush=True)
    try:
        row.update(work())
    except Exception as error:  # noqa: BLE001
        row["note"] = f"failed: {type(error).__name__}: {error}"
    print(f"  {row['images_per_s']:,.0f} img/s" if row.get("images_per_s") else
          f"  {row.get('note', '')}", flush=True)
    return row


def photo_records(args, sizes: Sizes, workers: int, notes: list[str]):
    """(records folder, converter comparison) of the generated photo set."""
    from tools.benchmark.conversion import compare
    from tools.converter.photos import write_photo_set

    work = Path(args.work)
    n_train = args.photos or sizes.photos
    src = work / f"photos-{n_train}"
    print(f"photo set: {n_train} train + {n_train // 10} val images in {src} ...", flush=True)
    t0 = time.perf_counter()
    write_photo_set(src, n_train, max(n_train // 10, sizes.classes), sizes.classes,
                    workers=workers, source_folder=args.sources)
    notes.append(f"ImageNet-format set: {n_train} train + {max(n_train // 10, sizes.classes)} "
                 f"val photos (tools/converter/photos.py, {time.perf_counter() - t0:.0f} s), "
                 "converted below")
    formats = ["webdataset"] + (["ffcv"] if available("ffcv") is None else [])
    print(f"converting ({', '.join(formats)}) ...", flush=True)
    conversion = compare(src, work / "records", formats, workers,
                         reference_limit=min(500, n_train))
    if "convert" not in args.only:
        conversion = None
    return Path(work / "records" / "imagenet"), conversion


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    sizes = PROFILES["smoke" if args.smoke else device.type]
    if args.steps:
        sizes = replace(sizes, steps=args.steps, imagenet_steps=args.steps)
    if args.threads:
        torch.set_num_threads(args.threads)
    workers = args.workers or report.cores()
    load_before = report.load_average()
    if report.is_busy(load_before):
        print(f"warning: load average {load_before} on {report.cores()} cores: the machine is "
              "busy, the numbers will be low and noisy", file=sys.stderr)
    settings = measure.RunSettings(device=str(device), amp=args.amp, compile=args.compile,
                                   channels_last=not args.no_channels_last, workers=workers)
    notes, conversion = list(args.note), None

    datasets = []  # (name, records, loader batch, model, e2e batch)
    cifar = Path(args.cifar) if args.cifar else DEFAULT_CIFAR
    if (cifar / fmt.MANIFEST).is_file():
        name = fmt.read_manifest(cifar)["dataset"]
        datasets.append((name, cifar, sizes.cifar_batch, sizes.cifar_model,
                         sizes.cifar_e2e_batch))
    else:
        notes.append(f"no CIFAR records at {cifar}: `make dataset-cifar10` adds them")
    if args.imagenet:
        imagenet = Path(args.imagenet)
    else:
        imagenet, conversion = photo_records(args, sizes, workers, notes)
    datasets.append(("imagenet", imagenet, sizes.imagenet_batch, sizes.imagenet_model,
                     sizes.imagenet_e2e_batch))

    loaders, e2e = [], []
    for dataset, root, batch, model, e2e_batch in datasets:
        for backend in args.backends:
            why = available(backend)
            cfg = data_config(dataset, root, backend, batch, sizes, num_workers=workers,
                              channels_last=settings.channels_last)
            for split in ("train", "val" if dataset == "imagenet" else "test"):
                row = {"dataset": dataset, "split": split, "backend": backend, "batch": batch}
                if why:
                    row["note"] = f"skipped: {why}"
                elif "loaders" in args.only:
                    attempt(row, f"{dataset} {split} {backend}", lambda cfg=cfg, split=split:
                            measure.measure_loader(cfg, split, device, sizes.warmup,
                                                   sizes.batches))
                loaders.append(row)
        if "e2e" not in args.only:
            continue
        for backend in [*args.backends, "synthetic"]:
            why = available(backend)
            row = {"dataset": dataset, "backend": backend, "model": model, "batch": e2e_batch}
            root_ = measure.NO_RECORDS if backend == "synthetic" else str(root)
            cfg = data_config(dataset, root_, backend, e2e_batch, sizes)
            if why:
                row["note"] = f"skipped: {why}"
            else:
                warmup, steps, _ = sizes.e2e(dataset)
                attempt(row, f"{dataset} e2e {model} {backend}",
                        lambda cfg=cfg, model=model, warmup=warmup, steps=steps:
                        measure.measure_e2e(cfg, model, settings, warmup, steps))
            e2e.append(row)
    add_ratios(loaders, e2e)

    trainer = []
    if "trainer" in args.only:
        for dataset, _, _, model, e2e_batch in datasets:
            print(f"trainer vs bare loop: {model} batch {e2e_batch} ...", flush=True)
            synthetic = data_config(dataset, measure.NO_RECORDS, "synthetic", e2e_batch, sizes,
                                    channels_last=settings.channels_last)
            trainer.append({"dataset": dataset, **measure.trainer_vs_bare(
                synthetic, model, settings, sizes.e2e(dataset)[2], sizes.rounds)})
            print(f"  trainer ÷ bare = {trainer[-1]['ratio']:.2f}", flush=True)
    layouts = []
    if "layouts" in args.only:
        for dataset, _, _, model, e2e_batch in datasets:
            print(f"layouts: {model} batch {e2e_batch} ...", flush=True)
            size = sizes.imagenet_crop if dataset == "imagenet" else 32
            layouts.append(measure.layouts(dataset, model, e2e_batch, size, str(device),
                                           sizes.e2e(dataset)[2], sizes.rounds))
            print(f"  channels_last ÷ contiguous = {layouts[-1]['speedup']:.2f}", flush=True)

    load_after = report.load_average()
    stamp = report.now()
    command = shlex.join(["python", "tools/bench.py",
                          *(sys.argv[1:] if argv is None else argv)])
    result = {
        "command": command, "date": stamp.isoformat(timespec="seconds"),
        "machine": report.machine_tag(device), "device": report.device_name(device),
        "device_type": device.type, "cores": report.cores(), "versions": report.versions(),
        "torch_threads": torch.get_num_threads(),
        "load_average": {"before": load_before, "after": load_after},
        "busy": report.is_busy(load_before),  # after: includes the benchmark itself
        "settings": {"smoke": args.smoke, "workers": workers, "amp": args.amp,
                     "compile": args.compile, "channels_last": settings.channels_last,
                     **{k: v for k, v in vars(sizes).items()}},
        "datasets": [{"name": d, "records": str(r), "loader_batch": b, "model": m,
                      "e2e_batch": eb} for d, r, b, m, eb in datasets],
        "loaders": loaders, "e2e": e2e, "trainer_vs_bare": trainer, "layouts": layouts,
        "conversion": conversion, "notes": notes,
    }
    name = args.name or f"{result['machine']}-{stamp:%Y-%m-%d}"
    paths = report.write(result, Path(args.out), name)
    print(report.markdown(result))
    print("wrote " + ", ".join(str(p) for p in paths))
    return result


def data_config(dataset: str, root, backend: str, batch: int, sizes: Sizes,
                **extra) -> DataConfig:
    aug = {}
    if dataset == "imagenet" and sizes.imagenet_crop != AugSpec.crop:
        crop = sizes.imagenet_crop
        aug = {"aug": AugSpec(scale_min=crop * 9 // 8, scale_max=crop * 3 // 2, crop=crop,
                              eval_resize=crop * 8 // 7)}
    return DataConfig(dataset=dataset, root=str(root), backend=backend, batch_size=batch,
                      eval_batch_size=batch, val_size=0, **aug, **extra)


def add_ratios(loaders: list[dict], e2e: list[dict]) -> None:
    """Loaders: × torchvision on the same split. E2E: efficiency = ÷ synthetic."""
    base = {(r["dataset"], r["split"]): r["images_per_s"] for r in loaders
            if r["backend"] == "torchvision" and r.get("images_per_s")}
    for row in loaders:
        if row.get("images_per_s") and (row["dataset"], row["split"]) in base:
            row["vs_torchvision"] = row["images_per_s"] / base[(row["dataset"], row["split"])]
    bound = {r["dataset"]: r["images_per_s"] for r in e2e
             if r["backend"] == "synthetic" and r.get("images_per_s")}
    for row in e2e:
        if row.get("images_per_s") and row["dataset"] in bound:
            row["efficiency"] = row["images_per_s"] / bound[row["dataset"]]


if __name__ == "__main__":
    main()
