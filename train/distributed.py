"""DDP set-up from torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE), the few collectives
the run needs, and how a rank that fails ends the job; all of them are no-ops in a single
process.

Rank 0 alone reads and writes the run directory (config, checkpoints, metrics): the other
ranks get what it read through `from_rank0`, so the run directory needs to be on rank 0's disk
only. The process group is joined first (`join`), before anything that could fail on one rank
only, and needs no config: gloo for CPU tensors and, where CUDA is available, nccl for CUDA
tensors.

A rank that fails must leave at once (`exit_failed`): the others learn of it only when its
connections close, and a process kept alive (a loader thread that never ends, a peer it waits
for) would hold every rank in its next collective until the group's timeout.
"""
from __future__ import annotations

import os
import pickle
import sys
import traceback
from collections.abc import Callable
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


def launched() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) of this process, from torchrun's environment."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")),
            int(os.environ.get("WORLD_SIZE", "1")))


def join() -> None:
    """Join the process group when launched by torchrun with more than one process (once)."""
    _, local_rank, world_size = launched()
    if world_size == 1 or dist.is_initialized():
        return
    backend = "gloo"
    if torch.cuda.is_available():
        if local_rank < torch.cuda.device_count():
            torch.cuda.set_device(local_rank)  # before nccl's first collective
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend)


def setup(device_choice: str) -> DistEnv:
    """The process group joined (join) and this rank's device."""
    join()
    rank, local_rank, world_size = launched()
    return DistEnv(rank, local_rank, world_size, resolve_device(device_choice, local_rank))


def cleanup(env: DistEnv | None = None) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _group() -> tuple[int, int]:
    """(rank, world size) in the process group; (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(value, env: DistEnv | None = None):
    """Rank 0's `value` on every rank (pickled, sent over gloo from the CPU)."""
    if _group()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
    return box[0]


def from_rank0(read: Callable[[], object]):
    """`read()` run on rank 0 only, its result on every rank; or, if it raised, the same
    exception raised on every rank (marked `relayed` on the others)."""
    rank, world_size = _group()
    if world_size == 1:
        return read()
    result, error = None, None
    if rank == 0:
        try:
            result = read()
        except Exception as raised:  # sent to the others, then raised here too
            error = raised
            try:
                pickle.dumps(raised)
            except Exception:
                error = RuntimeError(f"{type(raised).__name__}: {raised}")
    result, sent = broadcast_object((result, error))
    if error is not None:
        raise error
    if sent is not None:
        sent.relayed = True
        raise sent
    return result


def sync_buffers(model: nn.Module, env: DistEnv) -> None:
    """Give every rank rank 0's BN running statistics: each rank's last forward updated its own,
    so without this the ranks would evaluate (and hold) slightly different models."""
    if env.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


# ----------------------------------------------------------------------------- a rank fails
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
             "remote process exited")


def peer_failed(error: BaseException) -> bool:
    """Whether `error` is a collective that failed because another rank's process ended."""
    if not isinstance(error, RuntimeError):
        return False
    return isinstance(error, getattr(dist, "DistNetworkError", ())) or any(
        text in str(error) for text in PEER_GONE)


def failure_message(error: BaseException, expected: tuple[type, ...]) -> str | None:
    """What a failed rank prints: one line for an expected error (`error: rank R: ...`) and for
    a collective cut off by another rank's failure; None for an error rank 0 raised and printed
    (this rank re-raised it); a traceback for anything else."""
    rank, world_size = _group()
    if getattr(error, "relayed", False):
        return None
    where = f"rank {rank} of {world_size}"
    if isinstance(error, expected):
        return f"error: {where}: {error}"
    if peer_failed(error):  # the backend's first sentence, without its advice
        said = (str(error).strip().splitlines() or [type(error).__name__])[0].split(". ")[0]
        return (f"error: {where}: stopped, another rank failed (its error is in its own "
                f"output): {said}")
    return "".join(traceback.format_exception(error)).rstrip() + f"\nerror: {where}: " \
        f"{type(error).__name__}: {error}"


def exit_failed(error: BaseException, expected: tuple[type, ...]) -> None:
    """End this rank of a process group at once: its message (failure_message), flushed, then
    os._exit, without waiting for threads, atexit handlers or the group (a failed peer may never
    answer). Exit status 130 after a second Ctrl-C, else 1."""
    if isinstance(error, KeyboardInterrupt):
        code, message = 130, None
    else:
        code, message = 1, failure_message(error, expected)
    try:
        if message:
            print(message, file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)
