"""Optimizer, learning rate and early stopping, from the config.

The learning rate is set in one place, the loop, from `LRSchedule.lr(iteration)` before every
step (nanoGPT's way). Multistep decay and warm-up are a pure function of the iteration; only the
plateau rule keeps state, moved by `on_eval` with each val error.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from train.config import OptimConfig, ScheduleConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig,
                    device: torch.device | None = None) -> torch.optim.SGD:
    """SGD with momentum; weight decay on every parameter, BN included, as in the paper. On
    CUDA the fused kernel (one launch, and it reads a tensor lr: CUDA-graph steps need it)."""
    fused = device is not None and torch.device(device).type == "cuda"
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.nesterov,
                           fused=fused or None)


def total_iterations(cfg: ScheduleConfig, iters_per_epoch: int) -> int:
    """The run's length in optimizer steps."""
    return cfg.total if cfg.unit == "iter" else cfg.total * iters_per_epoch


def multistep_lr(step: int, base_lr: float, cfg: ScheduleConfig) -> float:
    """The lr during `step` (0-based, in cfg.unit): warm-up, then x gamma at each milestone."""
    lr = base_lr * cfg.gamma ** sum(step >= m for m in cfg.milestones)
    if step < cfg.warmup:
        if cfg.warmup_kind == "constant":
            return lr * cfg.warmup_factor
        return lr * (cfg.warmup_factor + (1 - cfg.warmup_factor) * step / cfg.warmup)
    return lr


class LRSchedule:
    """lr(iteration) for every kind; `on_eval(error)` drives kind "plateau" (torch's
    ReduceLROnPlateau rule: mode min, absolute threshold, no cooldown)."""

    def __init__(self, cfg: ScheduleConfig, base_lr: float, iters_per_epoch: int):
        self.cfg, self.base_lr, self.iters_per_epoch = cfg, base_lr, iters_per_epoch
        self.plateau_lr, self.best, self.bad_evals = base_lr, math.inf, 0

    def step_of(self, iteration: int) -> int:
        return iteration if self.cfg.unit == "iter" else iteration // self.iters_per_epoch

    def lr(self, iteration: int) -> float:
        if self.cfg.kind == "plateau":
            return self.plateau_lr
        return multistep_lr(self.step_of(iteration), self.base_lr, self.cfg)

    def on_eval(self, error: float) -> None:
        if self.cfg.kind != "plateau":
            return
        if error < self.best - self.cfg.plateau_threshold:
            self.best, self.bad_evals = error, 0
            return
        self.bad_evals += 1
        if self.bad_evals > self.cfg.plateau_patience:
            self.plateau_lr *= self.cfg.gamma
            self.bad_evals = 0

    def state_dict(self) -> dict:
        return {"plateau_lr": self.plateau_lr, "best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        self.plateau_lr, self.best = float(state["plateau_lr"]), float(state["best"])
        self.bad_evals = int(state["bad_evals"])


class EarlyStopper:
    """Tracks the best val error; `should_stop` after an evaluation that brought no improvement
    when `patience` or more in a row did not (seed 004's EarlyStopper; None = never stop)."""

    def __init__(self, patience: int | None):
        self.patience = patience
        self.best = math.inf
        self.bad_evals = 0

    def step(self, error: float) -> bool:
        """Record one evaluation; True if it is the best so far."""
        if error < self.best:
            self.best, self.bad_evals = error, 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and 0 < self.bad_evals >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_evals = float(state["best"]), int(state["bad_evals"])
