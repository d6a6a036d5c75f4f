"""The log interval: what a run knows about itself between host syncs.

`Meter` owns the interval: host time waiting for batches, the step's device sums read once per
`log_every` iterations (the one host sync, with the NaN check and, under DDP, the stop vote), and
the record that goes to metrics.jsonl. `SpeedWatch` watches the steady step time of the whole
run: when it drifts more than DRIFT from the first steady block of iterations and stays there,
or torch.compile compiles again after warm-up, the run says so once, with the numbers (and the
reason of a recompile). A drift is said with what moved beside it, so that it says where to
look: the GPU's own step time (the device got slower), the data wait (the loader), the host's
load average (another job on the machine).
"""
from __future__ import annotations

import math
import os
import statistics
import time

import torch

from train.distributed import DistEnv, all_reduce_sum

DRIFT = 0.2  # steady step time this far from its baseline is reported
WINDOW = 500  # iterations (at most an epoch) a step-time block spans
PERSIST = 2  # consecutive blocks that must drift before it is said


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


class StepTimer:
    """GPU time of a step from CUDA events (no sync: read after the log step's host sync)."""

    def __init__(self, device: torch.device):
        cuda = device.type == "cuda"
        self.events = [torch.cuda.Event(enable_timing=True) for _ in range(2)] if cuda else None

    def mark(self, which: int) -> None:
        if self.events is not None:
            self.events[which].record()

    def last_ms(self) -> float | None:
        """The last marked step's GPU milliseconds; call after a host sync."""
        return None if self.events is None else self.events[0].elapsed_time(self.events[1])


def load_average() -> float | None:
    """The host's 1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def block_medians(block: list[dict]) -> dict:
    """Median of each quantity over a block's intervals (None where any interval lacks it)."""
    return {key: (statistics.median(r[key] for r in block)
                  if all(r[key] is not None for r in block) else None)
            for key in block[0] if key != "steps"}


def drift_context(before: dict, now: dict) -> str:
    """What moved beside the step time: "GPU step 2.40 -> 3.90 ms, data wait 1% -> 2%, load
    average 1.0 -> 3.2" (the parts known both times)."""
    parts = []
    for key, text in (("gpu_step_ms", "GPU step {:.2f} -> {:.2f} ms"),
                      ("data_wait", "data wait {:.0%} -> {:.0%}"),
                      ("load", "load average {:.1f} -> {:.1f}")):
        if before.get(key) is not None and now.get(key) is not None:
            parts.append(text.format(before[key], now[key]))
    return ", ".join(parts)


def compile_events():
    """torch._dynamo's compile-start callbacks, or None where this torch has none."""
    dynamo = getattr(torch, "_dynamo", None)
    return getattr(dynamo, "callback_handler", None)


def last_guard_failure() -> str | None:
    """The newest guard failure torch._dynamo recorded: why it compiled again."""
    try:
        from torch._dynamo.utils import guard_failures
    except ImportError:
        return None
    reasons = [r for failures in guard_failures.values() for r in failures]
    return str(reasons[-1]).strip().splitlines()[0] if reasons else None


class SpeedWatch:
    """Steady step time and compilations over a whole run. `warm()` ends the warm-up (the
    trainer calls it after the first epoch and its evaluation). After it, the log intervals are
    grouped into blocks of at least `window` iterations; the first block's median step time is
    the baseline, and when PERSIST blocks in a row differ from it by more than DRIFT in the same
    direction, the run says so once (a transient blip of a shared host is not a drift). A
    compilation after warm-up is said once too, with dynamo's reason."""

    def __init__(self, say=print, window: int = WINDOW):
        self.say, self.window = say, max(int(window), 1)
        self.warmed, self.iteration = False, 0
        self.block: list[dict] = []  # the current block's intervals (steps, step_ms, ...)
        self.baseline: dict = {}  # the first steady block's medians (block_medians)
        self.last_block: dict = {}  # the latest block's
        self.blocks: list[float] = []  # step-time medians of the blocks since the baseline
        self.drift: dict | None = None
        self.compiles = 0
        self.recompiles: list[dict] = []
        self._handler = compile_events()
        if self._handler is not None:
            self._handler.register_start_callback(self._on_compile)

    def close(self) -> None:
        if self._handler is not None and self._on_compile in self._handler.start_callbacks:
            self._handler.remove_start_callback(self._on_compile)

    def _on_compile(self, args=None) -> None:
        self.compiles += 1
        if self.warmed:
            self.recompiled(getattr(args, "compile_id", None), last_guard_failure())

    def recompiled(self, compile_id, reason: str | None) -> None:
        event = {"iteration": self.iteration, "compile_id": str(compile_id),
                 "reason": reason or "unknown"}
        self.recompiles.append(event)
        if len(self.recompiles) == 1:
            self.say(f"speed: torch.compile compiled again at iteration {self.iteration}, after "
                     f"warm-up (compile {compile_id}): {event['reason']}")

    def warm(self) -> None:
        self.warmed = True

    @property
    def baseline_ms(self) -> float | None:
        return self.baseline.get("step_ms")

    def interval(self, iteration: int, step_ms: float, gpu_step_ms: float | None = None,
                 data_wait: float | None = None) -> None:
        """One log interval: the iteration it ended at, its wall time per step, and beside it
        the GPU's time of a step and the fraction of time spent waiting for data."""
        steps, self.iteration = max(iteration - self.iteration, 1), iteration
        if not self.warmed or not math.isfinite(step_ms):
            return
        self.block.append({"steps": steps, "step_ms": step_ms, "gpu_step_ms": gpu_step_ms,
                           "data_wait": data_wait, "load": load_average()})
        if sum(r["steps"] for r in self.block) < self.window:
            return
        medians = block_medians(self.block)
        median, self.last_block = medians["step_ms"], medians
        self.block = []
        if self.baseline_ms is None:
            self.baseline = medians
            return
        self.blocks.append(median)
        recent = [m / self.baseline_ms for m in self.blocks[-PERSIST:]]
        if self.drift is not None or len(recent) < PERSIST:
            return
        if all(r > 1 + DRIFT for r in recent) or all(r < 1 - DRIFT for r in recent):
            self.report_drift(iteration, median)

    def report_drift(self, iteration: int, now: float) -> None:
        ratio = now / self.baseline_ms
        beside = drift_context(self.baseline, self.last_block)
        self.drift = {"iteration": iteration, "baseline_ms": self.baseline_ms, "now_ms": now,
                      "ratio": ratio, "before": self.baseline, "now": self.last_block}
        cause = (f"; torch.compile compiled again {len(self.recompiles)} time(s) after "
                 "warm-up" if self.recompiles else "; no recompile since warm-up")
        self.say(f"speed: steady step time {'rose' if ratio > 1 else 'fell'} "
                 f"{100 * abs(ratio - 1):.0f}% by iteration {iteration}: "
                 f"{self.baseline_ms:.2f} -> {now:.2f} ms/step{cause}"
                 + (f"; beside it: {beside}" if beside else ""))

    def summary(self) -> dict:
        return {"baseline_step_ms": self.baseline_ms,
                "last_step_ms": self.blocks[-1] if self.blocks else None,
                "drift": self.drift, "compiles": self.compiles,
                "recompiles_after_warmup": self.recompiles}

    def state_dict(self) -> dict:
        return {"baseline": self.baseline, "blocks": self.blocks, "drift": self.drift}

    def load_state_dict(self, state: dict) -> None:
        """A resumed run keeps its baseline (a resume is warm-up again for compilations)."""
        self.drift = state["drift"]
        # a checkpoint before 2026-12-06 kept the baseline's step time alone
        self.baseline = dict(state["baseline"] if "baseline" in state
                             else {"step_ms": state["baseline_ms"]})
        self.blocks = list(state.get("blocks", []))


class Meter:
    """One log interval at a time: `waited(s)` after each batch fetch, `read(...)` at a log
    step returns the record and the stop vote."""

    def __init__(self, env: DistEnv, watch: SpeedWatch | None = None):
        self.env, self.watch = env, watch or SpeedWatch()
        self.timer = StepTimer(env.device)

    def start(self, images: int, iteration: int) -> None:
        """A new interval begins (at an epoch's start: evaluation time is not step time)."""
        self.last, self.images, self.iteration = time.perf_counter(), images, iteration
        self.wait = 0.0

    def waited(self, seconds: float) -> None:
        self.wait += seconds

    def read(self, sums: torch.Tensor, stop: bool, state, lr: float,
             epoch_sums: torch.Tensor) -> tuple[dict, bool]:
        """The interval's record from the step's device sums (summed over ranks with the stop
        votes: the host sync); raises NonFiniteLoss. Adds the sums to `epoch_sums`."""
        votes = torch.cat([sums.float(), torch.full((1,), float(stop), device=sums.device)])
        all_reduce_sum(votes, self.env)
        loss_sum, correct, count, stops = votes.tolist()
        if not math.isfinite(loss_sum):
            raise NonFiniteLoss(f"training loss is {loss_sum / max(count, 1)} at iteration "
                                f"{state.iteration} (epoch {state.epoch})")
        epoch_sums += torch.tensor([loss_sum, correct, count], dtype=torch.float64)
        now = time.perf_counter()
        interval = max(now - self.last, 1e-9)
        steps = max(state.iteration - self.iteration, 1)
        record = {"loss": loss_sum / max(count, 1),
                  "error": 100.0 * (1 - correct / max(count, 1)), "lr": lr,
                  "img_per_s": (state.images - self.images) / interval,
                  "data_wait": min(self.wait / interval, 1.0),
                  "step_ms": 1000 * interval / steps}
        gpu_ms = self.timer.last_ms()
        if gpu_ms is not None:
            record["gpu_step_ms"] = gpu_ms
        state.data_wait += self.wait
        self.watch.interval(state.iteration, record["step_ms"], gpu_ms, record["data_wait"])
        self.start(state.images, state.iteration)
        return record, stops > 0
