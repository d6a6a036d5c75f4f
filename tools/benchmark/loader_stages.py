"""Where the native ImageNet loader's time goes, and what it and training do to each other.

  python3 -m tools.benchmark.loader_stages --records DIR/imagenet [--device cuda] [--batch 256]
      [--workers 16] [--batches 20] [--model resnet34] [--out FILE.json]

On the same records and device, in one process:
1. stages: one train batch at a time on this thread, the device synchronized after each stage
   (ms per batch): read (the shard bytes), decode (on CUDA nvJPEG on the loader's own stream for
   data.hw_decoder_load of the batch, the CPU for the rest), augment (crops resampled, flips,
   lighting, normalize);
2. the loader alone with its threads (images/s);
3. the model's training step alone on a fixed batch, as a run steps without torch.compile
   (steps/s; bf16 autocast, channels_last, on CUDA the whole step one CUDA graph);
4. both at once: the model stepping in a thread of its own while the loader runs: the loader's
   images/s and the model's steps/s beside each other;
5. the loader alone at each --loads value of data.hw_decoder_load (the share of a batch nvJPEG
   decodes on CUDA, the rest decoded by the loader threads on the CPU; the CPU decodes all).
If the loader slows in 4 but not the model, training takes what the loader needs (the GPU's
engines, or the GIL); if the model slows, the loader's work gets in its way; 1 says which stage.
The native backend's end-to-end gap on one H200 (2026-12-04: loader 8,432 img/s alone, 0.43 of
the synthetic bound beside ResNet-34 B) is what this is for. Runs on the CPU too (tests).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pipelines import DataConfig, build_loader  # noqa: E402
from tools.benchmark.measure import measure_loader  # noqa: E402
from train.build import model_for, precision  # noqa: E402
from train.config import from_dict  # noqa: E402
from train.loop import device_sync  # noqa: E402
from train.schedule import build_optimizer  # noqa: E402
from train.step import TrainStep, plan_step  # noqa: E402


def stage_times(loader, device: torch.device, batches: int) -> dict:
    """Median ms per batch of each stage of pipelines.native.ImageNetLoader._batch."""
    times = {"read": [], "decode": [], "augment": []}
    plan = list(loader.plan.batches())
    for number, positions in plan[:batches]:
        t0 = time.perf_counter()
        data, labels = loader.read(positions)
        t1 = time.perf_counter()
        images = loader.order.decode(data)
        device_sync(device)
        t2 = time.perf_counter()
        with loader.order.context():
            loader._augment(loader.plan.epoch, number, images, labels)
        device_sync(device)
        t3 = time.perf_counter()
        for name, seconds in (("read", t1 - t0), ("decode", t2 - t1), ("augment", t3 - t2)):
            times[name].append(1e3 * seconds)
    return {name: round(statistics.median(values), 2) for name, values in times.items()}


class ModelLoop:
    """Training steps of `model` on one fixed batch, as a run steps (train/step.py: bf16
    autocast, channels_last, the whole step one CUDA graph on CUDA; no torch.compile), in a
    thread: steps/s."""

    def __init__(self, model_name: str, records: str, batch: torch.Tensor,
                 device: torch.device):
        cfg = from_dict({"model": {"name": model_name, "shortcut": "B"},
                         "data": {"dataset": "imagenet", "root": records},
                         "run": {"device": device.type, "amp": "bf16"}})
        self.device, prec = device, precision(cfg, device)
        self.plan = plan_step(False, "auto", device, 1, prec.amp_dtype)
        model = model_for(cfg, device)
        self.train_step = TrainStep(model, build_optimizer(model, cfg.optim, device), prec,
                                    device, graph=self.plan.graph)
        self.images = batch.to(memory_format=torch.channels_last)
        self.labels = torch.zeros(len(batch), dtype=torch.int64, device=device)
        self.steps, self.stop = 0, threading.Event()

    def step(self) -> None:
        self.train_step(self.images, self.labels)
        self.steps += 1

    def rate(self, seconds: float) -> float:
        """Steps/s of this thread alone over about `seconds`."""
        self.step()
        device_sync(self.device)
        start, first = time.perf_counter(), self.steps
        while time.perf_counter() - start < seconds:
            self.step()
        device_sync(self.device)
        return (self.steps - first) / (time.perf_counter() - start)

    def run(self) -> None:
        while not self.stop.is_set():
            self.step()
            if self.steps % 4 == 0:
                device_sync(self.device)  # a run's queue depth, not an unbounded one


def measure(records: str, device: str, batch: int, workers: int, batches: int,
            model: str, loads: tuple[float, ...] = ()) -> dict:
    device = torch.device(device)
    cfg = DataConfig(dataset="imagenet", root=records, backend="native", batch_size=batch,
                     num_workers=workers)
    loader = build_loader(cfg, "train", device, seed=0)
    if len(loader) < batches + 1:
        raise SystemExit(f"{records}: {len(loader)} train batches of {batch}; need "
                         f"{batches + 1} (--batches, --batch)")
    loader.set_epoch(0)
    stages = stage_times(loader, device, batches)
    alone = measure_loader(cfg, "train", device, 1, batches)["images_per_s"]
    stream = iter(loader)
    sample, _ = next(stream)
    stream.close()
    trainer = ModelLoop(model, records, sample.detach().clone(), device)
    seconds = max(2.0, batches * batch / alone)
    model_alone = trainer.rate(seconds)
    thread = threading.Thread(target=trainer.run, daemon=True)
    first = trainer.steps
    start = time.perf_counter()
    thread.start()
    beside = measure_loader(cfg, "train", device, 1, batches)["images_per_s"]
    trainer.stop.set()
    thread.join()
    device_sync(device)
    model_beside = (trainer.steps - first) / (time.perf_counter() - start)
    by_load = {str(load): round(measure_loader(replace(cfg, hw_decoder_load=load), "train",
                                               device, 1, batches)["images_per_s"], 1)
               for load in loads}
    per_image = {name: round(ms / batch, 4) for name, ms in stages.items()}
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "batch": batch, "workers": workers, "batches": batches, "model": model,
            "model_step": trainer.plan.why,
            "hw_decoder_load": cfg.hw_decoder_load,
            "stage_ms_per_batch": stages, "stage_ms_per_image": per_image,
            "loader_alone_img_s": round(alone, 1), "loader_beside_model_img_s": round(beside, 1),
            "model_alone_img_s": round(model_alone * batch, 1),
            "model_beside_loader_img_s": round(model_beside * batch, 1),
            "loader_alone_img_s_by_hw_decoder_load": by_load}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", required=True, help="ImageNet-format records (webdataset)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--model", default="resnet34")
    parser.add_argument("--loads", default="1,0.65,0.5",
                        help="comma list of data.hw_decoder_load values for the loader alone")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    try:
        loads = tuple(float(v) for v in args.loads.split(",") if v.strip())
    except ValueError:
        parser.error(f"--loads {args.loads!r}: expected a comma list of numbers in [0, 1]")
    if not all(0 <= v <= 1 for v in loads):
        parser.error(f"--loads {args.loads!r}: every value must be in [0, 1]")
    result = measure(args.records, args.device, args.batch, args.workers, args.batches,
                     args.model, loads)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
