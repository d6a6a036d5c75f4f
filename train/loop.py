"""`train_one_epoch` and `evaluate`: backend-neutral, and free of host syncs between log steps.

The loaders hand over normalized batches already on the device, so the loop never knows which
backend feeds it. The step (train/step.py) runs the model; the meter (train/meter.py) owns the
log interval: loss and correct counts stay on the device and are read only every `log_every`
iterations, at checkpoints and at epoch ends.

Every log record says where the time went: images/s, the fraction of host time spent waiting
for the next batch (`data_wait`: host clock around `next()`, no sync), the wall time per step
and, on CUDA, the GPU time of the last step (CUDA events, read at the log step's sync).
"""
from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

from train.build import Precision
from train.distributed import DistEnv, all_reduce_sum
from train.meter import Meter, NonFiniteLoss
from train.schedule import LRSchedule
from train.step import TrainStep

__all__ = ["NonFiniteLoss", "TrainState", "LoopSettings", "RunHooks", "train_one_epoch",
           "evaluate", "predict", "device_sync", "data_verdict", "data_bound", "gpu_busy",
           "DATA_BOUND", "GPU_BOUND"]


@dataclass
class TrainState:
    """Where the run is: saved in checkpoints, restored on resume."""

    epoch: int = 0  # current epoch (0-based)
    batch: int = 0  # next batch of that epoch
    iteration: int = 0  # optimizer steps taken
    images: int = 0  # training images seen, all ranks
    train_time: float = 0.0  # seconds spent in train_one_epoch
    data_wait: float = 0.0  # of those, seconds the host waited for the next batch
    eval_time: float = 0.0  # seconds spent evaluating on the selection split during training
    checkpoint_time: float = 0.0  # seconds spent writing checkpoints
    checkpointed: int = 0  # the iteration of the last checkpoint (ckpt_every counts from it)
    elapsed: float = 0.0  # wall seconds of the whole run before this process started
    # this epoch's train [loss sum, correct, count] so far: a mid-epoch resume continues them
    epoch_sums: list = field(default_factory=lambda: [0.0, 0.0, 0.0])

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, type(getattr(self, key))(value))

    @contextlib.contextmanager
    def timed(self, name: str):
        """Add the block's wall seconds to the field `name` (eval_time, checkpoint_time)."""
        began = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, name, getattr(self, name) + time.perf_counter() - began)

    def next_epoch_if_done(self, batches_per_epoch: int) -> bool:
        """After a pass: move to the next epoch's first batch if this one is complete."""
        if self.batch < batches_per_epoch:
            return False
        self.epoch, self.batch = self.epoch + 1, 0
        return True


@dataclass
class LoopSettings:
    total_iters: int  # stop when state.iteration reaches this
    log_every: int
    ckpt_every: int  # a mid-epoch checkpoint this many iterations after the last; 0 = none
    progress: bool  # show a tqdm bar


@dataclass
class RunHooks:
    """What the loop tells the run: a log record, a checkpoint is due, a stop was asked for."""

    on_log: Callable[[dict], None] = lambda record: None
    on_checkpoint: Callable[[], None] = lambda: None
    stop_requested: Callable[[], bool] = lambda: False


def device_sync(device: torch.device) -> None:
    """Wait for queued GPU work (epoch edges only, for honest timings)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


DATA_BOUND = 0.1  # a run waiting on its loader for more than this fraction of the time says so
GPU_BOUND = 0.9  # a CUDA step whose GPU time is at least this fraction of its wall time


def gpu_busy(records: list[dict]) -> float | None:
    """On CUDA, the fraction of a step's wall time the GPU spent in the training step: the
    median over the log intervals (first one, with compilation, included but outvoted) of
    gpu_step_ms / step_ms. None without GPU timings (the CPU)."""
    ratios = [min(r["gpu_step_ms"] / r["step_ms"], 1.0) for r in records
              if r.get("kind") == "train" and r.get("gpu_step_ms") and r.get("step_ms")]
    return statistics.median(ratios) if ratios else None


def data_bound(wait_fraction: float, busy: float | None = None) -> bool:
    """Whether the loader held training back. On CUDA the host also waits in the loader when
    it has run ahead of the GPU (it blocks wherever it next queues work, e.g. the loader's
    kernels), so a GPU busy with the step for GPU_BOUND of the time is not data-bound."""
    return wait_fraction > DATA_BOUND and (busy is None or busy < GPU_BOUND)


def data_verdict(wait_fraction: float, busy: float | None = None) -> str:
    """A plain sentence on whether the run was data-bound."""
    percent = f"{100 * wait_fraction:.0f}% of the time waiting on the loader"
    gpu = "" if busy is None else f"; the GPU busy with the training step {100 * busy:.0f}% of it"
    if data_bound(wait_fraction, busy):
        return f"data-bound: {percent}{gpu}; try data.num_workers / another data.backend"
    if busy is not None and busy >= GPU_BOUND:
        queued = (" (the host waited behind the GPU's queue, not for data)"
                  if wait_fraction > DATA_BOUND else "")
        return f"GPU-bound: {percent}{gpu}{queued}"
    return f"not data-bound: {percent}{gpu}"


def train_one_epoch(step: TrainStep, loader, schedule: LRSchedule, state: TrainState,
                    settings: LoopSettings, meter: Meter, hooks: RunHooks | None = None) -> dict:
    """Train from (state.epoch, state.batch) to the end of the epoch, or until total_iters or
    a requested stop (after the current step; under DDP at the next log step, agreed across
    ranks). Returns the epoch's train loss/error (over all its iterations, those before a
    resume included), and `stopped`."""
    hooks, env = hooks or RunHooks(), meter.env
    step.model.train()
    device_sync(env.device)
    start = time.perf_counter()
    meter.start(state.images, state.iteration)
    loader.set_epoch(state.epoch, start=state.batch)
    batches = iter(loader)
    if state.batch == 0:
        state.epoch_sums = [0.0, 0.0, 0.0]
    epoch_sums = torch.tensor(state.epoch_sums, dtype=torch.float64)
    bar = tqdm(total=len(loader), initial=state.batch, disable=not settings.progress,
               desc=f"epoch {state.epoch}", leave=False, dynamic_ncols=True)
    stopped = False
    while True:
        asked = time.perf_counter()
        batch = next(batches, None)
        meter.waited(time.perf_counter() - asked)
        if batch is None:
            break
        images, labels = batch
        lr = schedule.lr(state.iteration)
        step.set_lr(lr)
        meter.timer.mark(0)
        step(images, labels)
        meter.timer.mark(1)
        state.batch += 1
        state.iteration += 1
        state.images += labels.shape[0] * env.world_size
        bar.update()

        at_ckpt = (settings.ckpt_every
                   and state.iteration - state.checkpointed >= settings.ckpt_every)
        done = state.iteration >= settings.total_iters or state.batch >= len(loader)
        # a stop request is acted on at once in one process; under DDP the ranks must agree,
        # so they vote at the next log step
        stop_now = not env.distributed and hooks.stop_requested()
        if state.iteration % settings.log_every == 0 or at_ckpt or done or stop_now:
            record, stopped = meter.read(step.take_sums(), hooks.stop_requested(), state, lr,
                                         epoch_sums)
            state.epoch_sums = epoch_sums.tolist()
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.3g}",
                            img_s=f"{record['img_per_s']:.0f}",
                            wait=f"{100 * record['data_wait']:.0f}%",
                            step=f"{record['step_ms']:.0f}ms")
            hooks.on_log(record)
            if at_ckpt or stopped:
                state.train_time += time.perf_counter() - start
                hooks.on_checkpoint()  # its time is the checkpoint's, not training's
                start = time.perf_counter()
                meter.start(state.images, state.iteration)
            if stopped or state.iteration >= settings.total_iters:
                break
    bar.close()
    device_sync(env.device)
    state.train_time += time.perf_counter() - start
    state.data_wait += meter.wait
    meter.wait = 0.0
    loss_sum, correct, count = epoch_sums.tolist()
    return {"loss": loss_sum / max(count, 1), "error": 100.0 * (1 - correct / max(count, 1)),
            "stopped": stopped}


@torch.inference_mode()
def predict(model, images: torch.Tensor, precision: Precision) -> torch.Tensor:
    """Class probabilities (B, C). Multi-crop batches (B, K, 3, H, W) average the softmax of
    their K crops (10-crop testing)."""
    crops = images.shape[1] if images.ndim == 5 else 0
    with precision.autocast():
        logits = model(images.flatten(0, 1) if crops else images)
    probs = logits.float().softmax(dim=1)
    return probs.unflatten(0, (-1, crops)).mean(1) if crops else probs


def accumulate(probs: torch.Tensor, labels: torch.Tensor, sums: torch.Tensor | None,
               classes: int = 0):
    """Add [nll sum, top-1 correct, top-5 correct, count] of a batch to `sums` (on the device,
    no host sync), then with `classes`, per class: top-1 correct (classes), count (classes)."""
    top = probs.topk(min(5, probs.shape[1]), dim=1).indices == labels[:, None]
    nll = -probs.gather(1, labels[:, None]).clamp_min(1e-12).log().sum()
    count = torch.full((), labels.shape[0], device=labels.device)
    hits = top[:, 0]
    per_class = torch.zeros(2, classes, dtype=torch.float64, device=labels.device)
    if classes:
        per_class[0].index_add_(0, labels, hits.double())
        per_class[1].index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
    batch = torch.cat([torch.stack([nll, hits.sum(), top.any(1).sum(), count]).double(),
                       per_class.flatten()])
    return batch if sums is None else sums + batch


def metrics_from_sums(sums: list[float], class_names: list[str] | None = None) -> dict:
    """Loss, top-1/top-5 error (%) and count; with class_names (sums accumulated with as many
    classes), each class's top-1 accuracy (%, None for a class without images) by name."""
    nll, top1, top5, count = sums[:4]
    metrics = {"loss": nll / max(count, 1), "top1_error": 100.0 * (1 - top1 / max(count, 1)),
               "top5_error": 100.0 * (1 - top5 / max(count, 1)), "count": int(count)}
    if class_names:
        classes = len(class_names)
        hits, seen = sums[4:4 + classes], sums[4 + classes:4 + 2 * classes]
        metrics["per_class_accuracy"] = {
            name: (100.0 * h / n if n else None) for name, h, n in zip(class_names, hits, seen)}
    return metrics


@torch.inference_mode()
def evaluate(model, loader, precision: Precision, env: DistEnv,
             class_names: list[str] | None = None) -> dict:
    """Loss, top-1 and top-5 error (%) over an eval split, summed across ranks; with
    class_names, each class's accuracy too."""
    was_training = model.training
    model.eval()
    classes, sums = len(class_names or ()), None
    for images, labels in loader:
        sums = accumulate(predict(model, images, precision), labels, sums, classes)
    if sums is None:
        sums = torch.zeros(4 + 2 * classes, dtype=torch.float64, device=env.device)
    all_reduce_sum(sums, env)
    model.train(was_training)
    return metrics_from_sums(sums.tolist(), class_names)
