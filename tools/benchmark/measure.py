"""What the benchmark times: loaders alone, training through `train.loop.train_one_epoch`, the
same model in a bare eager loop, and the two memory layouts.

Ratios that must survive a noisy machine (trainer ÷ bare loop, channels_last ÷ contiguous) come
from interleaved rounds in one process: the median of the per-round ratios.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipelines import build_loader, num_classes
from pipelines.spec import DataConfig
from train.build import model_for, precision
from train.config import Config, from_dict, to_dict
from train.distributed import DistEnv
from train.loop import LoopSettings, RunHooks, TrainState, device_sync, train_one_epoch
from train.meter import Meter
from train.schedule import LRSchedule, build_optimizer
from train.step import TrainStep, plan_step

# No records here: the synthetic loader then sizes its epoch as the full dataset's, so the
# upper bound never depends on the size of the set being benchmarked.
NO_RECORDS = "/nonexistent/respipe-bench"


def batches_forever(loader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def check_batches(loader, what: str) -> None:
    if len(loader) == 0:
        raise ValueError(f"{what}: the loader makes no batch (fewer images than one batch with "
                         "drop_last); give a smaller batch or more images")


def measure_loader(cfg: DataConfig, split: str, device: torch.device, warmup: int,
                   batches: int) -> dict:
    """Build time, first-batch latency, then images/s over `batches` batches after `warmup`.

    Eval splits are timed over whole passes after two warm passes: an eval pays its pass's
    start-up (DALI builds its pipeline per pass, FFCV starts its thread and JIT-compiles the
    last, partial batch's shape), and a part of a small pass would over-weight it."""
    t0 = time.perf_counter()
    loader = build_loader(cfg, split, device)
    check_batches(loader, f"{cfg.dataset} {split} {cfg.backend}")
    t1 = time.perf_counter()
    if split != "train":
        per_pass = len(loader)
        warmup = max(2, -(-warmup // per_pass)) * per_pass
        batches = max(1, -(-batches // per_pass)) * per_pass
    stream = batches_forever(loader)
    images, _ = next(stream)
    device_sync(device)
    t2 = time.perf_counter()
    for _ in range(max(warmup - 1, 0)):
        next(stream)
    device_sync(device)
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        images, labels = next(stream)
        count += len(labels)
    device_sync(device)
    elapsed = time.perf_counter() - start
    stream.close()
    return {"images_per_s": count / elapsed, "images": count, "seconds": elapsed,
            "build_s": t1 - t0, "first_batch_s": t2 - t1, "batches_per_epoch": len(loader),
            "batch_shape": list(images.shape)}


@dataclass
class RunSettings:
    """What a training run would use: the e2e numbers depend on all of it."""

    device: str = "cpu"
    amp: str = "bf16"  # CUDA only, as in a run
    compile: bool | str = "auto"  # as a run resolves them (train/step.plan_step)
    cuda_graph: bool | str = "auto"
    channels_last: bool = True
    workers: int = 2


def run_config(data: DataConfig, model: str, settings: RunSettings, iters: int) -> Config:
    shortcut = {"resnet18": "B", "resnet34": "B"}.get(model)
    return from_dict({
        "data": {**to_dict(data), "num_workers": settings.workers,
                 "channels_last": settings.channels_last},
        "model": {"name": model, **({"shortcut": shortcut} if shortcut else {})},
        "schedule": {"unit": "iter", "total": iters},
        "run": {"device": settings.device, "amp": settings.amp, "compile": settings.compile,
                "cuda_graph": settings.cuda_graph, "progress": False},
    }, "benchmark")


class Trainee:
    """A model, step and state as train/run.py builds them, trained by train_one_epoch."""

    def __init__(self, cfg: Config, device: torch.device):
        torch.manual_seed(0)
        self.cfg, self.device = cfg, device
        self.precision = precision(cfg, device)
        self.plan = plan_step(cfg.run.compile, cfg.run.cuda_graph, device, 1,
                              self.precision.amp_dtype)
        self.raw = model_for(cfg, device)
        model = torch.compile(self.raw, mode=self.plan.compile) if self.plan.compile else self.raw
        self.step = TrainStep(model, build_optimizer(self.raw, cfg.optim, device),
                              self.precision, device, self.plan.graph, self.plan.mark_step)
        self.state = TrainState()
        self.meter = Meter(DistEnv(0, 0, 1, device))

    def train(self, loader, iters: int, log_every: int) -> list[tuple[float, int, dict]]:
        """Train `iters` more steps (across epoch ends); (host time, iteration, record) at
        each log step."""
        schedule = LRSchedule(self.cfg.schedule, self.cfg.optim.lr, len(loader))
        total = self.state.iteration + iters
        settings = LoopSettings(total_iters=total, log_every=log_every, ckpt_every=0,
                                progress=False)
        logs = []

        def on_log(record):
            logs.append((time.perf_counter(), self.state.iteration, record))

        while self.state.iteration < total:
            train_one_epoch(self.step, loader, schedule, self.state, settings, self.meter,
                            RunHooks(on_log=on_log))
            self.state.next_epoch_if_done(len(loader))
        return logs


def measure_e2e(data: DataConfig, model: str, settings: RunSettings, warmup: int,
                steps: int) -> dict:
    """Images/s of training fed by data.backend, timed from the first log step at or after
    `warmup` steps to the last (the loop syncs the host at log steps), and the loop's own
    data-wait fraction over that window."""
    device = torch.device(settings.device)
    trainee = Trainee(run_config(data, model, settings, warmup + steps), device)
    loader = build_loader(trainee.cfg.data, "train", device)
    check_batches(loader, f"{data.dataset} train {data.backend}")
    logs = trainee.train(loader, warmup + steps, log_every=max(1, min(warmup, steps)))
    first = next(i for i, (_, it, _) in enumerate(logs) if it >= warmup)
    window = logs[first:]
    if len(window) < 2:
        raise ValueError(f"{steps} steps after {warmup} warm-up steps: too few to time")
    seconds = window[-1][0] - window[0][0]
    steps_timed = window[-1][1] - window[0][1]
    wait = sum(r["data_wait"] * r["step_ms"] * (it - prev) / 1000
               for (_, prev, _), (_, it, r) in zip(window, window[1:]))
    return {"images_per_s": steps_timed * data.batch_size / seconds,
            "steps_per_s": steps_timed / seconds, "steps": steps_timed, "seconds": seconds,
            "data_wait": min(wait / seconds, 1.0), "batch": data.batch_size, "model": model}


def bare_steps(model, images, labels, optimizer, steps: int, device: torch.device,
               autocast=contextlib.nullcontext) -> float:
    """Seconds for `steps` plain eager SGD steps on one fixed batch."""
    device_sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        with autocast():
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    device_sync(device)
    return time.perf_counter() - start


def trainer_vs_bare(synthetic: DataConfig, model: str, settings: RunSettings, steps: int,
                    rounds: int) -> dict:
    """The trainer (train_one_epoch on the synthetic loader) against a bare eager loop of the
    same model on the same batch, alternating rounds; ratio = trainer ÷ bare, per round."""
    device = torch.device(settings.device)
    batch = synthetic.batch_size
    trainee = Trainee(run_config(synthetic, model, settings, steps * (rounds + 1)), device)
    loader = build_loader(trainee.cfg.data, "train", device)
    images, labels = next(iter(loader))
    bare = model_for(trainee.cfg, device)
    optimizer = torch.optim.SGD(bare.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    autocast = trainee.precision.autocast  # the same precision; eager, no loop around it
    trainee.train(loader, steps, log_every=steps)  # warm-up, compile included
    bare_steps(bare, images, labels, optimizer, steps, device, autocast)
    trainer_s, bare_s = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        trainee.train(loader, steps, log_every=steps)
        trainer_s.append(time.perf_counter() - start)
        bare_s.append(bare_steps(bare, images, labels, optimizer, steps, device, autocast))
    ratios = [b / t for t, b in zip(trainer_s, bare_s)]
    return {"model": model, "batch": batch, "steps": steps, "rounds": rounds,
            "trainer_images_per_s": batch * steps / statistics.median(trainer_s),
            "bare_images_per_s": batch * steps / statistics.median(bare_s),
            "ratio": statistics.median(ratios), "ratios": ratios,
            "step": trainee.plan.why,
            "note": "bare loop: eager (no compile), the run's autocast, no scaler or logging"}


def layouts(dataset: str, model: str, batch: int, size: int, device: str, steps: int,
            rounds: int) -> dict:
    """Bare eager SGD steps with contiguous vs channels_last tensors, interleaved rounds."""
    from models import build_model

    device = torch.device(device)
    shortcut = {"resnet18": "B", "resnet34": "B"}.get(model)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g).to(device)
    labels = torch.randint(num_classes(dataset), (batch,), generator=g).to(device)
    runs = {}
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        net = build_model(model, num_classes(dataset), **({"shortcut": shortcut} if shortcut
                                                           else {}))
        net = net.to(device, memory_format=layout)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        x = images.contiguous(memory_format=layout)
        bare_steps(net, x, labels, optimizer, 1, device)  # warm-up
        runs[layout] = (net, x, optimizer)
    seconds = {layout: [] for layout in runs}
    for _ in range(rounds):
        for layout, (net, x, optimizer) in runs.items():
            seconds[layout].append(bare_steps(net, x, labels, optimizer, steps, device))
    cont, last = seconds[torch.contiguous_format], seconds[torch.channels_last]
    ratios = [c / cl for c, cl in zip(cont, last)]
    return {"dataset": dataset, "model": model, "batch": batch, "device": str(device),
            "steps": steps, "rounds": rounds,
            "contiguous_images_per_s": batch * steps / statistics.median(cont),
            "channels_last_images_per_s": batch * steps / statistics.median(last),
            "speedup": statistics.median(ratios), "ratios": ratios}
