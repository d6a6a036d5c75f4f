"""One training step: forward, loss, backward, optimizer update, and the train sums it adds to.

`TrainStep` is the only code that touches the model and the optimizer every iteration. Its sums
([loss x n, correct, n] since the last read) stay on the device; the meter reads them at log
steps. Three ways to run it:

- eager, or a torch.compile'd model (`mark_step`: CUDA-graph trees of mode reduce-overhead
  need each step marked);
- `graph`: the whole step captured once in a CUDA graph and replayed (CUDA, one process): after
  a few eager warm-up steps on a side stream, the batch is copied into static inputs and one
  replay runs forward, backward, the fused SGD update and the sums. The learning rate is a
  device tensor (`set_lr` fills it), so the schedule never needs a new capture.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from train.build import Precision

GRAPH_WARMUP = 3  # eager steps before the capture (cuDNN/cuBLAS set-up, torch.compile)


class TrainStep:
    def __init__(self, model, optimizer: torch.optim.Optimizer, precision: Precision,
                 device: torch.device, graph: bool = False, mark_step: bool = False):
        if graph and (device.type != "cuda" or precision.amp_dtype is torch.float16):
            raise ValueError("a CUDA-graph step needs a CUDA device and no fp16 loss scaling")
        self.model, self.optimizer, self.precision = model, optimizer, precision
        self.device, self.graph, self.mark_step = device, graph, mark_step
        self.scaler = precision.grad_scaler()
        self.sums = torch.zeros(3, device=device)
        self.calls, self._captured, self._static = 0, None, None

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor) and self.graph:
                group["lr"].fill_(lr)
            else:
                group["lr"] = float(lr)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.calls += 1
        if not self.graph:
            if self.mark_step:
                torch.compiler.cudagraph_mark_step_begin()
            self._step(images, labels)
        elif self._captured is not None:
            self._static[0].copy_(images)
            self._static[1].copy_(labels)
            self._captured.replay()
        elif self.calls <= GRAPH_WARMUP:
            self._on_side_stream(images, labels)
        else:
            self._capture(images, labels)
            self._captured.replay()

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        with self.precision.autocast(cache=not self.graph):
            logits = self.model(images)
            loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=not self.graph)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        n = labels.shape[0]
        correct = (logits.detach().argmax(1) == labels).sum()
        self.sums += torch.stack([loss.detach().float() * n, correct.float(),
                                  torch.full((), float(n), device=self.device)])

    def _on_side_stream(self, images, labels) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._step(images, labels)
        torch.cuda.current_stream(self.device).wait_stream(side)

    def _capture(self, images, labels) -> None:
        self._static = (images.clone(), labels.clone())
        for group in self.optimizer.param_groups:  # read by the fused kernel on every replay
            group["lr"] = torch.tensor(float(group["lr"]), device=self.device)
        self.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates them
        graph = torch.cuda.CUDAGraph()
        # thread_local: the loader's threads keep decoding on their own streams meanwhile
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._step(*self._static)
        self._captured = graph

    def take_sums(self) -> torch.Tensor:
        """The device sums since the last take, and zero them (no host sync)."""
        sums = self.sums.clone()
        self.sums.zero_()
        return sums


# run.compile=auto: the fastest correct mode measured per device (bench/results/).
AUTO_COMPILE = {"cuda": "default", "cpu": False}
# ...on CUDA only for runs long enough to pay its compiling back. One H200, ResNet-32 at batch
# 128 (bench/results/h200-16c-2026-12-04-gpu.md, section 4): torch.compile inside the whole-step
# graph warms up 20.1 s longer than the graph alone and saves 0.69 ms a step: even after 29,000.
COMPILE_PAYS_AFTER = 30_000


@dataclass(frozen=True)
class StepPlan:
    """How a run steps: its torch.compile mode (False: eager) and whether the whole step is
    one CUDA graph; `why` is said in the run header."""

    compile: str | bool
    graph: bool
    why: str

    @property
    def mark_step(self) -> bool:
        return self.compile == "reduce-overhead"


def plan_step(compile_mode: str | bool, cuda_graph: bool | str, device: torch.device,
              world_size: int, amp_dtype: torch.dtype | None,
              iterations: int | None = None) -> StepPlan:
    """Resolve run.compile and run.cuda_graph for this device and process count; `iterations`:
    the run's length (None: long enough for any compile to pay back)."""
    cuda = device.type == "cuda"
    short = ""
    if compile_mode == "auto":
        compile_mode = AUTO_COMPILE["cuda" if cuda else "cpu"]
        if compile_mode and iterations is not None and iterations < COMPILE_PAYS_AFTER:
            compile_mode = False
            short = (f" (run.compile=auto: torch.compile pays its compiling back after about "
                     f"{COMPILE_PAYS_AFTER:,} iterations, this run has {iterations:,})")
    fit = cuda and world_size == 1 and amp_dtype is not torch.float16
    if cuda_graph == "auto":
        graph = fit and compile_mode != "reduce-overhead"
    else:
        graph = bool(cuda_graph)
        if graph and not fit:
            raise ValueError("run.cuda_graph=true needs one CUDA process without fp16 "
                             f"(device {device}, {world_size} process(es), amp {amp_dtype})")
        if graph and compile_mode == "reduce-overhead":
            raise ValueError("run.cuda_graph=true captures the whole step already: use "
                             "run.compile=default (reduce-overhead makes graphs of its own)")
    why = f"torch.compile {compile_mode}" if compile_mode else "eager"
    why += ", whole step as one CUDA graph" if graph else ""
    return StepPlan(compile_mode, graph, why + short)
