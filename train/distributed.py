"""DDP set-up from torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE), and the few
collectives the loop needs; all of them are no-ops in a single process."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:  # rank 0 logs and saves
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("run.device=cuda but torch sees no CUDA device; use run.device=cpu")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(device_choice: str) -> DistEnv:
    """Join the process group when launched by torchrun (nccl on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_choice, local_rank)
    if world_size > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank, local_rank, world_size, device)


def cleanup(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(value, env: DistEnv):
    """Rank 0's `value` on every rank (e.g. the run directory's name)."""
    if not env.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_buffers(model: nn.Module, env: DistEnv) -> None:
    """Give every rank rank 0's BN running statistics: each rank's last forward updated its own,
    so without this the ranks would evaluate (and hold) slightly different models."""
    if env.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
