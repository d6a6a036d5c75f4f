"""Images/second of every data backend (train and eval), beside the torchvision DataLoader
baseline, in one run; optionally end to end (training steps/second vs the synthetic upper bound).

  python tools/bench.py --cifar data/records/cifar10 --imagenet data/records/imagenet
  python tools/bench.py --cifar data/records/cifar10 --e2e --model resnet20

Writes bench/results/<name>.json and .md with the device, versions and this exact command.
The machine may be shared and noisy: compare numbers from one run, not across runs.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pipelines import build_loader  # noqa: E402
from pipelines.spec import DataConfig, num_classes  # noqa: E402
from records import format as fmt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("native", "torchvision", "ffcv", "dali")
NEEDS = {"ffcv": ("ffcv",), "dali": ("nvidia.dali",)}
PACKAGES = ("torch", "torchvision", "numpy", "pillow", "ffcv", "nvidia-dali-cuda130", "numba",
            "opencv-python")


def available(backend: str) -> str | None:
    """None if the backend can run here, else why not."""
    for module in NEEDS.get(backend, ()):
        try:
            if importlib.util.find_spec(module) is None:
                return f"{module} not installed"
        except ImportError:
            return f"{module} not installed"
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batches_forever(loader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def measure_loader(cfg: DataConfig, split: str, device: torch.device, warmup: int,
                   batches: int) -> dict:
    """Build time, first-batch latency, then images/s over `batches` batches after warm-up."""
    t0 = time.perf_counter()
    loader = build_loader(cfg, split, device)
    t1 = time.perf_counter()
    stream = batches_forever(loader)
    images, _ = next(stream)
    sync(device)
    t2 = time.perf_counter()
    for _ in range(max(warmup - 1, 0)):
        next(stream)
    sync(device)
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        images, labels = next(stream)
        count += len(labels)
    sync(device)
    elapsed = time.perf_counter() - start
    stream.close()
    return {"images_per_s": count / elapsed, "images": count, "seconds": elapsed,
            "build_s": t1 - t0, "first_batch_s": t2 - t1, "batches_per_epoch": len(loader),
            "batch_shape": list(images.shape)}


def measure_training(cfg: DataConfig, device: torch.device, model_name: str, warmup: int,
                     steps: int) -> dict:
    """SGD steps/s of `model_name` fed by cfg.backend's train loader."""
    from models import build_model

    torch.manual_seed(0)
    model = build_model(model_name, num_classes(cfg.dataset)).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    stream = batches_forever(build_loader(cfg, "train", device))

    def step():
        images, labels = next(stream)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return len(labels)

    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    count = sum(step() for _ in range(steps))
    sync(device)
    elapsed = time.perf_counter() - start
    stream.close()
    return {"steps_per_s": steps / elapsed, "images_per_s": count / elapsed, "steps": steps,
            "seconds": elapsed}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model} ({cores} cores usable, no GPU)"


def load_average():
    """The machine's 1/5/15-minute load: how much else was running (the numbers depend on it)."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def versions() -> dict:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def ratio_table(rows: list[dict], key: str, unit: str) -> list[str]:
    lines = [f"| dataset | split | backend | {unit} | × torchvision | notes |",
             "|---|---|---|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row['dataset']} | {row['split']} | {row['backend']} | "
                     f"{number(row.get(key))} | {number(row.get('ratio'))} | "
                     f"{row.get('note', '')} |")
    return lines


def add_ratios(rows: list[dict], key: str, base: str = "torchvision") -> None:
    reference = {(r["dataset"], r["split"]): r[key] for r in rows
                 if r["backend"] == base and r.get(key)}
    for row in rows:
        if row.get(key) and (row["dataset"], row["split"]) in reference:
            row["ratio"] = row[key] / reference[(row["dataset"], row["split"])]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", help="CIFAR-10/100 dataset folder (tools/convert.py output)")
    parser.add_argument("--imagenet", help="ImageNet dataset folder (tools/convert.py output)")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=2, help="data.num_workers")
    parser.add_argument("--cifar-batch", type=int, default=512)
    parser.add_argument("--imagenet-batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    parser.add_argument("--e2e", action="store_true", help="also time training steps")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps (--e2e)")
    parser.add_argument("--e2e-batch", type=int, default=128, help="batch size of --e2e")
    parser.add_argument("--name", help="results file name (default from device and datasets)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--note", default="", help="free text saved with the results")
    args = parser.parse_args(argv)
    if not (args.cifar or args.imagenet):
        parser.error("give --cifar and/or --imagenet (dataset folders from tools/convert.py)")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        parser.error(f"--backends: unknown {unknown}; choose from {', '.join(BACKENDS)}")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = load_average()

    datasets = []
    for root, batch in ((args.cifar, args.cifar_batch), (args.imagenet, args.imagenet_batch)):
        if root:
            manifest = fmt.read_manifest(root)
            datasets.append((manifest["dataset"], root, batch))

    loader_rows, train_rows = [], []
    for dataset, root, batch in datasets:
        for backend in backends:
            why = available(backend)
            cfg = DataConfig(dataset=dataset, root=root, backend=backend, batch_size=batch,
                             eval_batch_size=batch, num_workers=args.workers)
            for split in ("train", "val" if dataset == "imagenet" else "test"):
                row = {"dataset": dataset, "split": split, "backend": backend}
                if why:
                    row["note"] = f"skipped: {why}"
                else:
                    print(f"{dataset} {split} {backend} ...", flush=True)
                    try:
                        row.update(measure_loader(cfg, split, device, args.warmup, args.batches))
                    except Exception as error:  # one failing backend must not hide the others
                        row["note"] = f"failed: {type(error).__name__}: {error}"
                    print(f"  {row.get('images_per_s', 0):,.0f} img/s {row.get('note', '')}")
                loader_rows.append(row)
            if args.e2e:
                row = {"dataset": dataset, "split": "train", "backend": backend,
                       "model": args.model}
                if why:
                    row["note"] = f"skipped: {why}"
                else:
                    print(f"{dataset} e2e {args.model} {backend} ...", flush=True)
                    try:
                        row.update(measure_training(replace(cfg, batch_size=args.e2e_batch),
                                                    device, args.model, args.warmup,
                                                    args.steps))
                    except Exception as error:
                        row["note"] = f"failed: {type(error).__name__}: {error}"
                train_rows.append(row)
        if args.e2e:
            cfg = DataConfig(dataset=dataset, root=root, backend="synthetic",
                             batch_size=args.e2e_batch)
            print(f"{dataset} e2e {args.model} synthetic ...", flush=True)
            train_rows.append({"dataset": dataset, "split": "train", "backend": "synthetic",
                               "model": args.model,
                               **measure_training(cfg, device, args.model, args.warmup,
                                                  args.steps)})
    add_ratios(loader_rows, "images_per_s")
    for row in train_rows:  # end to end: fraction of the synthetic upper bound
        bound = next((r["steps_per_s"] for r in train_rows if r["backend"] == "synthetic"
                      and r["dataset"] == row["dataset"]), None)
        if row.get("steps_per_s") and bound:
            row["of_synthetic"] = row["steps_per_s"] / bound

    command = shlex.join(["python", *([sys.argv[0]] if argv is None else ["tools/bench.py"]),
                          *(sys.argv[1:] if argv is None else argv)])
    result = {
        "command": command, "cwd": os.getcwd(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": device_name(device), "device_type": device.type, "versions": versions(),
        "torch_threads": torch.get_num_threads(),
        "load_average": {"before": load_before,
                         "after": load_average()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "name")},
        "loaders": loader_rows, "training": train_rows,
    }
    tag = "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device).split()[-1]
    name = args.name or "_".join([tag.lower(), *(d for d, _, _ in datasets),
                                  *(["e2e"] if args.e2e else [])])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {out / name}.json and .md")
    return result


def markdown(result: dict) -> str:
    lines = [f"# Data pipeline benchmark ({result['date']})", "",
             f"- command: `{result['command']}` (in `{result['cwd']}`)",
             f"- device: {result['device']}; torch threads {result['torch_threads']}; "
             f"load average (1/5/15 min) before {result['load_average']['before']}, after "
             f"{result['load_average']['after']}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items())]
    if result["settings"].get("note"):
        lines.append(f"- note: {result['settings']['note']}")
    lines += ["", "## Loader throughput (images/s; ratio vs the torchvision DataLoader)", ""]
    lines += ratio_table(result["loaders"], "images_per_s", "images/s")
    if result["training"]:
        lines += ["", f"## End to end: SGD steps/s of {result['settings']['model']}", "",
                  "| dataset | backend | steps/s | images/s | × synthetic | notes |",
                  "|---|---|---:|---:|---:|---|"]
        for row in result["training"]:
            lines.append(f"| {row['dataset']} | {row['backend']} | "
                         f"{number(row.get('steps_per_s'))} | {number(row.get('images_per_s'))} | "
                         f"{number(row.get('of_synthetic'))} | {row.get('note', '')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
