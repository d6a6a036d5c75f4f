"""Train a ResNet: `python train/run.py configs/X.yaml [key.sub=value ...] [--resume RUN_DIR]`.

One script in nanoGPT's phase order: config -> DDP and device -> data -> model (fresh or resumed)
-> optimizer, schedule, compile, DDP wrap -> logging -> the loop -> test, summary, curves.
Several processes: `torchrun --nproc_per_node N train/run.py ...` (data.batch_size is per rank).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # `python train/run.py`: import the repo's packages, not train/*.py
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import contextlib
import random
import signal
import time
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from models import build_model
from pipelines import build_loader, num_classes
from train import checkpoint as ckpt
from train import distributed
from train.config import Config, ConfigError, dump_config, load_config, to_dict
from train.loop import (LoopSettings, NonFiniteLoss, TrainState, device_sync, evaluate,
                        train_one_epoch)
from train.metrics import MetricsLog, plot_curves, read_metrics, write_json, write_text
from train.schedule import EarlyStopper, build_optimizer, build_scheduler

EXIT_CODES = {"completed": 0, "early_stopped": 0, "nonfinite": 1, "interrupted": 130}


@dataclass
class Result:
    status: str  # completed | early_stopped | interrupted | nonfinite
    run_dir: Path
    model: torch.nn.Module  # unwrapped from DDP and torch.compile
    summary: dict | None


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Train a ResNet from a YAML config.",
        epilog="Overrides are key.sub=value, e.g. optim.lr=0.05 run.device=cpu "
               "data.backend=ffcv schedule.milestones=[30,60]")
    parser.add_argument("args", nargs="*", metavar="CONFIG.yaml | key=value")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue RUN_DIR from its last.pt (config: RUN_DIR/config.yaml "
                             "unless a config file is given)")
    args = parser.parse_args(argv)
    configs = [a for a in args.args if "=" not in a]
    args.overrides = [a for a in args.args if "=" in a]
    if len(configs) > 1:
        parser.error(f"one config file at most, got {configs}")
    args.config = configs[0] if configs else None
    if args.config is None and args.resume is None:
        parser.error("give a config file, or --resume RUN_DIR")
    return args


def resolve_config(args) -> tuple[Config, Path | None, dict | None]:
    """The config, the run directory (None: name it later) and the checkpoint to resume."""
    if args.resume is None:
        cfg = load_config(args.config, args.overrides)
        if cfg.run.name is None:
            return cfg, None, None
        return cfg, Path(cfg.run.out_dir) / cfg.run.name, None
    run_dir = Path(args.resume)
    cfg = load_config(args.config or run_dir / "config.yaml", args.overrides)
    return cfg, run_dir, ckpt.load_checkpoint(run_dir / "last.pt")


def new_run_dir(cfg: Config, config_path: str | None) -> Path:
    stem = Path(config_path).stem if config_path else "run"
    name = cfg.run.name or f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.run.out_dir) / name
    if (run_dir / "last.pt").exists():
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                          "or pick another run.name")
    return run_dir


class StopFlag:
    """First SIGINT/SIGTERM: finish the step, checkpoint, exit. Second: abort at once."""

    def __init__(self):
        self.requested = False
        self.previous = {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signum, self.previous[signum])
        print(f"\n{signal.Signals(signum).name}: checkpointing after this step (under DDP: "
              "the next log step), then exiting; again to abort without saving",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def main(argv=None) -> Result:
    # ---- config
    args = parse_args(argv)
    cfg, run_dir, resumed = resolve_config(args)

    # ---- DDP, device, seeds, precision
    env = distributed.setup(cfg.run.device)
    device, is_main = env.device, env.is_main
    if run_dir is None:
        run_dir = Path(distributed.broadcast_object(str(new_run_dir(cfg, args.config)), env))
    cfg.run.out_dir, cfg.run.name = str(run_dir.parent), run_dir.name
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    threads = torch.get_num_threads()
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.run.amp)
    use_amp = cuda and amp_dtype is not None
    autocast = torch.autocast("cuda", dtype=amp_dtype) if use_amp else contextlib.nullcontext()
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype is torch.float16)
    if cfg.data.dtype == "bfloat16" and not (use_amp and amp_dtype is torch.bfloat16):
        raise ConfigError("data.dtype=bfloat16 needs CUDA with run.amp=bf16; "
                          f"here device={device}, run.amp={cfg.run.amp}")
    memory_format = torch.channels_last if cuda and cfg.data.channels_last \
        else torch.contiguous_format

    # ---- data (each rank reads its own share; augmentation is seeded by (seed, epoch, rank))
    def loader(split):
        return build_loader(cfg.data, split, device, env.rank, env.world_size, seed=cfg.run.seed)

    train_loader = loader("train")
    has_val = cfg.data.dataset == "imagenet" or cfg.data.val_size > 0
    val_loader = loader("val") if has_val else None
    iters_per_epoch = len(train_loader)
    sched = cfg.schedule
    total_iters = sched.total if sched.unit == "iter" else sched.total * iters_per_epoch

    # ---- model, fresh or resumed; the same seed on every rank gives the same init
    torch.manual_seed(cfg.run.seed)
    random.seed(cfg.run.seed)
    np.random.seed(cfg.run.seed)
    raw_model = build_model(cfg.model.name, num_classes(cfg.data.dataset),
                            shortcut=cfg.model.shortcut,
                            zero_init_residual=cfg.model.zero_init_residual,
                            stride_in_1x1=cfg.model.stride_in_1x1)
    raw_model.to(device, memory_format=memory_format)
    optimizer = build_optimizer(raw_model, cfg.optim)
    scheduler = build_scheduler(optimizer, sched)
    state, stopper = TrainState(), EarlyStopper(cfg.run.patience)
    progress = {"best": None, "time_to_target": None, "saved_iter": None}
    if resumed is not None:
        ckpt.load_model_state(raw_model, resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        scaler.load_state_dict(resumed["scaler"])
        state.load_state_dict(resumed["state"])
        stopper.load_state_dict(resumed["stopper"])
        progress = dict(resumed["progress"])
        ckpt.set_rng_state(resumed["rng"])

    # ---- compile, DDP
    model = raw_model
    if cfg.run.compile:
        model = torch.compile(model, mode=cfg.run.compile)
    if env.distributed:
        model = DDP(model, device_ids=[env.local_rank] if cuda else None)
    eval_model = model.module if env.distributed else model  # no DDP buffer syncs in eval

    # ---- logging (rank 0)
    log = None
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(dump_config(cfg), run_dir / "config.yaml")
        log = MetricsLog(run_dir, resume_iter=state.iteration if resumed is not None else None)
        where = f"resumed at iteration {state.iteration}" if resumed is not None else "new run"
        tqdm.write(f"{run_dir} ({where}): {cfg.model.name} on {cfg.data.dataset} "
                   f"[{cfg.data.backend}], {device} x{env.world_size}, {iters_per_epoch} it/epoch, "
                   f"{total_iters} iterations")
    clock0 = time.perf_counter() - state.elapsed

    def record(kind, **values):
        if log is not None:
            log.log(kind, state.iteration, epoch=state.epoch, **values)

    def save_checkpoint(best: bool = False) -> None:
        if not ckpt.all_finite(raw_model):  # every rank: they hold the same weights
            raise NonFiniteLoss(f"weights are not finite at iteration {state.iteration}")
        state.elapsed = time.perf_counter() - clock0
        progress["saved_iter"] = state.iteration
        if not is_main:
            return
        payload = {
            "model": raw_model.state_dict(), "model_name": cfg.model.name,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "state": state.state_dict(),
            "stopper": stopper.state_dict(), "progress": dict(progress),
            "config": to_dict(cfg), "rng": ckpt.rng_state(),
        }
        ckpt.save_atomic(payload, run_dir / "last.pt")
        if best:
            ckpt.save_atomic(payload, run_dir / "best.pt")

    settings = LoopSettings(
        total_iters=total_iters, step_per_iter=sched.unit == "iter" and sched.kind != "plateau",
        log_every=cfg.run.log_every, ckpt_every=cfg.run.ckpt_every, threads=threads,
        progress=is_main and cfg.run.progress and sys.stderr.isatty(),
        mark_step=cfg.run.compile == "reduce-overhead")

    # ---- the loop
    status, val = "completed", None
    try:
        with StopFlag() as stop:
            while state.iteration < total_iters:
                epoch = state.epoch
                result = train_one_epoch(
                    model, train_loader, optimizer, scheduler, scaler, autocast, state,
                    settings, env, on_log=lambda values: record("train", **values),
                    on_checkpoint=save_checkpoint, stop_requested=lambda: stop.requested)
                if result["stopped"]:
                    status = "interrupted"
                    break
                epoch_done = state.batch >= iters_per_epoch
                if epoch_done:
                    if sched.unit == "epoch" and sched.kind == "multistep":
                        scheduler.step()
                    state.epoch, state.batch = state.epoch + 1, 0
                finished = state.iteration >= total_iters
                improved, evaluated = False, None
                if has_val and (finished or epoch_done and state.epoch % cfg.run.eval_every == 0):
                    distributed.sync_buffers(raw_model, env)
                    val = evaluate(eval_model, val_loader, autocast, env)
                    improved = stopper.step(val["top1_error"])
                    if sched.kind == "plateau":
                        scheduler.step(val["top1_error"])
                    if improved:
                        progress["best"] = {"iteration": state.iteration, "epoch": state.epoch,
                                            "val": val}
                    target = cfg.run.target_error
                    if (target is not None and progress["time_to_target"] is None
                            and val["top1_error"] <= target):
                        progress["time_to_target"] = {
                            "seconds": time.perf_counter() - clock0,
                            "iteration": state.iteration, "epoch": state.epoch}
                    record("val", **val)
                    evaluated = val
                record("epoch", train_loss=result["loss"], train_error=result["error"],
                       lr=optimizer.param_groups[0]["lr"], train_time=state.train_time)
                save_checkpoint(best=improved)
                if is_main:
                    tqdm.write(epoch_line(epoch, result, evaluated, state, optimizer, clock0))
                if stopper.should_stop:
                    status = "early_stopped"
                    break
    except NonFiniteLoss as error:
        saved = progress["saved_iter"]
        where = (f"{run_dir / 'last.pt'} (iteration {saved}) is the last good checkpoint"
                 if saved is not None else "no checkpoint was written")
        message = f"stopping: {error}; {where}"
        record("event", message=message)
        print(message, file=sys.stderr, flush=True)
        if log is not None:
            log.close()
        distributed.cleanup(env)
        return Result("nonfinite", run_dir, raw_model, None)

    if status == "interrupted":
        if is_main:
            tqdm.write(f"interrupted at iteration {state.iteration}; resume with: "
                       f"python train/run.py --resume {run_dir}")
            log.close()
        distributed.cleanup(env)
        return Result(status, run_dir, raw_model, None)

    # ---- test, summary, curves
    summary = finish(cfg, env, run_dir, raw_model, eval_model, loader, autocast, state,
                     progress, val, iters_per_epoch, clock0, status, record, log, has_val)
    distributed.cleanup(env)
    return Result(status, run_dir, raw_model, summary)


def epoch_line(epoch, result, val, state, optimizer, clock0) -> str:
    parts = [f"epoch {epoch:3d}", f"iter {state.iteration}",
             f"train loss {result['loss']:.4f} err {result['error']:5.2f}%"]
    if val is not None:
        parts.append(f"val err {val['top1_error']:5.2f}% (top-5 {val['top5_error']:.2f}%)")
    parts += [f"lr {optimizer.param_groups[0]['lr']:.3g}",
              f"{state.images / max(state.train_time, 1e-9):.0f} img/s",
              f"{time.perf_counter() - clock0:.0f}s"]
    return " | ".join(parts)


def finish(cfg, env, run_dir, raw_model, eval_model, loader, autocast, state, progress, val,
           iters_per_epoch, clock0, status, record, log, has_val) -> dict | None:
    """Test error of the final and the best model, summary.json and curves.png."""
    distributed.sync_buffers(raw_model, env)
    test_loader = loader("test")
    test = evaluate(eval_model, test_loader, autocast, env)
    record("test", which="final", **test)
    best = progress["best"]
    best_test = test
    if best is not None and best["iteration"] != state.iteration:
        final_state = {k: v.clone() for k, v in raw_model.state_dict().items()}
        ckpt.load_model_state(raw_model, ckpt.load_checkpoint(run_dir / "best.pt")["model"])
        best_test = evaluate(eval_model, test_loader, autocast, env)
        record("test", which="best", **best_test)
        raw_model.load_state_dict(final_state)
    device_sync(env.device)
    if not env.is_main:
        return None
    if not has_val:  # nothing to choose by: the final model is the best
        ckpt.save_atomic(ckpt.load_checkpoint(run_dir / "last.pt"), run_dir / "best.pt")
    wall = time.perf_counter() - clock0
    tta = progress["time_to_target"]
    device_name = torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else "cpu"
    summary = {
        "run": run_dir.name, "status": status, "model": cfg.model.name,
        "dataset": cfg.data.dataset, "backend": cfg.data.backend, "device": device_name,
        "world_size": env.world_size, "global_batch": cfg.data.batch_size * env.world_size,
        "iterations": state.iteration, "epochs": round(state.iteration / iters_per_epoch, 3),
        "final": {"val": val, "test": test},
        "best": None if best is None else {**best, "test": best_test},
        "test_top1_error": test["top1_error"], "test_top5_error": test["top5_error"],
        "images_per_sec": state.images / max(state.train_time, 1e-9),
        "train_time_s": state.train_time, "wall_time_s": wall,
        "target_error": cfg.run.target_error,
        "time_to_target_s": None if tta is None else tta["seconds"],
        "iteration_to_target": None if tta is None else tta["iteration"],
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
    }
    write_json(summary, run_dir / "summary.json")
    plot_curves(read_metrics(run_dir), run_dir / "curves.png",
                title=f"{cfg.model.name} {cfg.data.dataset}")
    log.close()
    tqdm.write(f"done ({status}): test error {test['top1_error']:.2f}% "
               f"(top-5 {test['top5_error']:.2f}%), {summary['images_per_sec']:.0f} img/s, "
               f"{wall:.0f}s; {run_dir}")
    return summary


if __name__ == "__main__":
    try:
        sys.exit(EXIT_CODES[main().status])
    except (ConfigError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:  # a second Ctrl-C: the last checkpoint on disk stays valid
        sys.exit(130)
