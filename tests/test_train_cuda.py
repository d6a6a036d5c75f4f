"""CUDA smoke tests (skipped without a GPU): bf16 autocast, channels_last and torch.compile in the
real loop, with `torch.cuda.set_sync_debug_mode("error")` around hot-loop steps to prove that no
step waits for the host."""
from __future__ import annotations

import pytest
import torch

from fixtures import tiny_args, write_tiny_cifar
from pipelines import build_loader
from train.checkpoint import load_checkpoint
from train.config import load_config
from train.distributed import DistEnv
from train.loop import LoopSettings, TrainState, train_one_epoch
from train.run import main
from train.schedule import LRSchedule, build_optimizer
from train.setup import model_for, precision

pytestmark = pytest.mark.cuda


class SyncGuard:
    """Yields the loader's batches with sync debug mode "error" from batch `first` to the one
    before `last`: those steps run entirely under the guard (the last step logs, a host sync)."""

    def __init__(self, loader, first: int, last: int):
        self.loader, self.first, self.last = loader, first, last

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, epoch, start=0):
        self.loader.set_epoch(epoch, start)

    def __iter__(self):
        try:
            for i, batch in enumerate(self.loader):
                torch.cuda.set_sync_debug_mode("error" if self.first <= i < self.last else 0)
                yield batch
        finally:
            torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("compile_mode", [False, "default"])
def test_hot_loop_makes_no_host_syncs(tmp_path, compile_mode):
    records = write_tiny_cifar(tmp_path)
    cfg = load_config("configs/resnet20.yaml", [f"data.root={records}", "data.val_size=0",
                                                "data.batch_size=32", "run.amp=bf16"])
    device = torch.device("cuda")
    loader = build_loader(cfg.data, "train", device)  # 480 images: 15 batches
    model = model_for(cfg, device)
    prec = precision(cfg, device)
    assert prec.memory_format is torch.channels_last and prec.amp_dtype is torch.bfloat16
    optimizer = build_optimizer(model, cfg.optim)
    schedule = LRSchedule(cfg.schedule, cfg.optim.lr, len(loader))
    run_model = torch.compile(model, mode=compile_mode) if compile_mode else model
    logs = []
    settings = LoopSettings(total_iters=10_000, log_every=1000, ckpt_every=0, progress=False)
    env = DistEnv(0, 0, 1, device)
    state = TrainState()
    train_one_epoch(run_model, SyncGuard(loader, first=4, last=14), optimizer, schedule,
                    prec.grad_scaler(), prec, state, settings, env,
                    logs.append, lambda: None, lambda: False)
    assert state.iteration == 15 and len(logs) == 1  # one host sync: at the epoch's end


def test_cuda_run_with_compile_bf16_channels_last(tmp_path):
    records = write_tiny_cifar(tmp_path / "data")
    result = main(tiny_args(records, tmp_path, "gpu", "run.device=cuda", "run.compile=default",
                            "run.amp=bf16", "data.channels_last=true"))
    assert result.status == "completed"
    ckpt = load_checkpoint(tmp_path / "gpu" / "last.pt")
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in ckpt["model"])
    assert result.summary["device"] != "cpu"
    assert result.summary["final"]["test"]["count"] == 120
