"""Optimizer, learning-rate schedule and early stopping, from the config."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim import lr_scheduler

from train.config import OptimConfig, ScheduleConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.SGD:
    """SGD with momentum; weight decay on every parameter, BN included, as in the paper."""
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig):
    """A torch.optim.lr_scheduler stepped once per `cfg.unit` (kind multistep) or once per val
    evaluation with the val error (kind plateau, ReduceLROnPlateau)."""
    if cfg.kind == "plateau":
        return lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.gamma, patience=cfg.plateau_patience,
            threshold=cfg.plateau_threshold, threshold_mode="abs")
    if not cfg.warmup:
        return lr_scheduler.MultiStepLR(optimizer, milestones=cfg.milestones, gamma=cfg.gamma)
    if cfg.warmup_kind == "constant":
        warmup = lr_scheduler.ConstantLR(optimizer, factor=cfg.warmup_factor,
                                         total_iters=cfg.warmup)
    else:
        warmup = lr_scheduler.LinearLR(optimizer, start_factor=cfg.warmup_factor,
                                       total_iters=cfg.warmup)
    decay = lr_scheduler.MultiStepLR(optimizer, milestones=cfg.milestones, gamma=cfg.gamma)
    return lr_scheduler.ChainedScheduler([warmup, decay])


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
