"""The benchmark's parts over its datasets, each a list of result rows: every backend's loaders
alone, training end to end, the trainer against a bare loop, the memory layouts. A backend
that fails leaves a row saying why ("failed: ..."), and the other backends still run."""
from __future__ import annotations

import torch

from tools.benchmark import measure
from tools.benchmark.plan import Dataset, Sizes, available, data_config
from tools.benchmark.report import FAILED, failed


def attempt(row: dict, what: str, work) -> dict:
    """row updated with work()'s result, or with a note saying why it failed (one failing
    backend must not hide the others)."""
    print(f"{what} ...", flush=True)
    try:
        row.update(work())
    except Exception as error:  # noqa: BLE001
        row["note"] = f"{FAILED}{type(error).__name__}: {error}"
    print(f"  {row['images_per_s']:,.0f} img/s" if row.get("images_per_s") else
          f"  {row.get('note', '')}", flush=True)
    return row


def loaders(datasets: list[Dataset], backends: list[str], sizes: Sizes,
            device: torch.device, settings: measure.RunSettings, run: bool) -> list[dict]:
    """Each backend's train and eval loader alone (rows for skipped backends even if not run)."""
    rows = []
    for d in datasets:
        for backend in backends:
            why = available(backend, d)
            cfg = data_config(d.name, d.records, backend, d.loader_batch, sizes,
                              num_workers=settings.workers,
                              channels_last=settings.channels_last)
            for split in ("train", "val" if d.name == "imagenet" else "test"):
                row = {"dataset": d.name, "split": split, "backend": backend,
                       "batch": d.loader_batch}
                if why:
                    row["note"] = f"skipped: {why}"
                elif run:
                    attempt(row, f"{d.name} {split} {backend}", lambda cfg=cfg, split=split:
                            measure.measure_loader(cfg, split, device, sizes.warmup,
                                                   sizes.batches))
                rows.append(row)
    return rows


def end_to_end(datasets: list[Dataset], backends: list[str], sizes: Sizes,
               settings: measure.RunSettings) -> list[dict]:
    """Training through train_one_epoch fed by each backend, and by the synthetic bound."""
    rows = []
    for d in datasets:
        for backend in [*backends, "synthetic"]:
            why = available(backend, d)
            row = {"dataset": d.name, "backend": backend, "model": d.model,
                   "batch": d.e2e_batch}
            root = measure.NO_RECORDS if backend == "synthetic" else str(d.records)
            cfg = data_config(d.name, root, backend, d.e2e_batch, sizes)
            if why:
                row["note"] = f"skipped: {why}"
            else:
                warmup, steps, _ = sizes.e2e(d.name)
                attempt(row, f"{d.name} e2e {d.model} {backend}",
                        lambda cfg=cfg, model=d.model, warmup=warmup, steps=steps:
                        measure.measure_e2e(cfg, model, settings, warmup, steps))
            rows.append(row)
    return rows


def trainer_vs_bare(datasets: list[Dataset], sizes: Sizes,
                    settings: measure.RunSettings) -> list[dict]:
    rows = []
    for d in datasets:
        print(f"trainer vs bare loop: {d.model} batch {d.e2e_batch} ...", flush=True)
        synthetic = data_config(d.name, measure.NO_RECORDS, "synthetic", d.e2e_batch, sizes,
                                channels_last=settings.channels_last)
        rows.append({"dataset": d.name, **measure.trainer_vs_bare(
            synthetic, d.model, settings, sizes.e2e(d.name)[2], sizes.rounds)})
        print(f"  trainer ÷ bare = {rows[-1]['ratio']:.2f}", flush=True)
    return rows


def layouts(datasets: list[Dataset], sizes: Sizes, device: torch.device) -> list[dict]:
    rows = []
    for d in datasets:
        print(f"layouts: {d.model} batch {d.e2e_batch} ...", flush=True)
        size = sizes.imagenet_crop if d.name == "imagenet" else 32
        rows.append(measure.layouts(d.name, d.model, d.e2e_batch, size, str(device),
                                    sizes.e2e(d.name)[2], sizes.rounds))
        print(f"  channels_last ÷ contiguous = {rows[-1]['speedup']:.2f}", flush=True)
    return rows


def add_ratios(loader_rows: list[dict], e2e_rows: list[dict]) -> None:
    """Loaders: × torchvision on the same split. E2E: efficiency = ÷ synthetic."""
    base = {(r["dataset"], r["split"]): r["images_per_s"] for r in loader_rows
            if r["backend"] == "torchvision" and r.get("images_per_s")}
    for row in loader_rows:
        if row.get("images_per_s") and (row["dataset"], row["split"]) in base:
            row["vs_torchvision"] = row["images_per_s"] / base[(row["dataset"], row["split"])]
    bound = {r["dataset"]: r["images_per_s"] for r in e2e_rows
             if r["backend"] == "synthetic" and r.get("images_per_s")}
    for row in e2e_rows:
        if row.get("images_per_s") and row["dataset"] in bound:
            row["efficiency"] = row["images_per_s"] / bound[row["dataset"]]


def paper(sizes: Sizes, device: torch.device) -> list[dict]:
    """The 64k-iteration ResNet-32 run projected per step mode (each in its own process)."""
    from tools.benchmark.paper_projection import run_modes

    rows = run_modes(list(sizes.paper_modes), str(device), sizes.paper_steps,
                     sizes.paper_warmup)
    for row in rows:
        if "failed" in row:
            row["note"] = FAILED + row.pop("failed")
    return rows


def failures(result: dict) -> list[str]:
    """What failed of what was asked, one "<dataset> <split> <backend>: why" each."""
    rows = [f"{r['dataset']} {r.get('split', 'e2e')} {r['backend']}: "
            f"{r['note'].removeprefix(FAILED)}"
            for part in ("loaders", "e2e") for r in result[part] if failed(r)]
    return rows + [f"paper projection {r['mode']}: {r['note'].removeprefix(FAILED)}"
                   for r in result.get("paper", []) if failed(r)]
