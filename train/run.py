"""Train a ResNet: `python train/run.py configs/X.yaml [key.sub=value ...] [--resume RUN_DIR]`.

`Trainer.__init__` is the table of contents of a run: processes and device, run directory,
precision, loaders, model, optimizer and schedule, resumed state, logger. `fit()` is the loop:
train an epoch, evaluate on the selection split, checkpoint; `finish()` reports the final and
best models on the report split and writes summary.json and curves.png.
Several processes: `torchrun --nproc_per_node N train/run.py ...` (data.batch_size is per rank);
rank 0 alone reads and writes the run directory (train/distributed.py), and a rank that fails
ends the job with its message (distributed.exit_failed).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # `python train/run.py`: import the repo's packages, not train/*.py
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import random
import shlex
import signal
import time
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from pipelines import LoaderError, build_loader, class_names, report_split, selection_split
from records import datasets
from records.format import RecordsError
from train import checkpoint as ckpt
from train import distributed
from train.build import model_for, precision
from train.checkpoint import BEST, LAST, PREVIOUS
from train.config import Config, ConfigError, dump_config, load_config, to_dict
from train.files import LOCK, RunError, RunLock, set_aside
from train.loop import (
    LoopSettings,
    NonFiniteLoss,
    RunHooks,
    TrainState,
    data_bound,
    data_verdict,
    device_sync,
    evaluate,
    gpu_busy,
    train_one_epoch,
)
from train.meter import WINDOW, Meter, SpeedWatch
from train.metrics import MetricsLog, plot_curves, read_metrics, write_json, write_text
from train.schedule import EarlyStopper, LRSchedule, build_optimizer, total_iterations
from train.step import StepPlan, TrainStep, plan_step

EXIT_CODES = {"completed": 0, "early_stopped": 0, "finished": 0, "nonfinite": 1,
              "interrupted": 130}
FINISHED = ("completed", "early_stopped")  # summary.json's status of a run that is done
ROOT = Path(__file__).resolve().parents[1]


def overall(metrics: dict | None) -> dict | None:
    """The metrics without the per-class accuracies (those go to summary.json once)."""
    return metrics and {k: v for k, v in metrics.items() if k != "per_class_accuracy"}


NO_TEST_NOTE = ("{} has no labelled test set: the reported numbers are val numbers, on the "
                "same images that chose the best model")


@dataclass
class Result:
    status: str  # completed | early_stopped | interrupted | nonfinite | finished (already)
    run_dir: Path
    model: torch.nn.Module | None  # unwrapped from DDP and torch.compile; None: finished
    summary: dict | None


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Train a ResNet from a YAML config.",
        epilog="Overrides are key.sub=value, e.g. optim.lr=0.05 run.device=cpu "
               "data.backend=ffcv schedule.milestones=[30,60]")
    parser.add_argument("args", nargs="*", metavar="CONFIG.yaml | key=value")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue RUN_DIR from its last.pt (or last.prev.pt, should "
                             "last.pt be unreadable), or from a checkpoint named as "
                             "RUN_DIR/best.pt (config: RUN_DIR/config.yaml unless a config "
                             "file is given)")
    args = parser.parse_args(argv)
    configs = [a for a in args.args if "=" not in a]
    args.overrides = [a for a in args.args if "=" in a]
    if len(configs) > 1:
        parser.error(f"one config file at most, got {configs}")
    args.config = configs[0] if configs else None
    if args.config is None and args.resume is None:
        parser.error("give a config file, or --resume RUN_DIR")
    return args


def shell_command(script: str, *args) -> str:
    """`script args` (script: a path in the repository) as a command line that runs as copied
    from this directory: this interpreter (.venv/bin/python from the repository's root)."""
    def here(path: Path) -> str:
        path = path.absolute()
        return str(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)

    return shlex.join([here(Path(sys.executable)), here(ROOT / script), *map(str, args)])


def resolve_config(args) -> tuple[Config, Path | None, Path | None]:
    """The config, the run directory (None: name it later) and the checkpoint file named by
    --resume (None: a new run, or RUN_DIR's last.pt)."""
    if args.resume is None:
        cfg = load_config(args.config, args.overrides)
        run_dir, checkpoint = None, None
        if cfg.run.name is not None:
            run_dir = Path(cfg.run.out_dir) / cfg.run.name
    else:
        resume = Path(args.resume)
        run_dir, checkpoint = (resume.parent, resume) if resume.suffix == ".pt" else (resume, None)
        if not run_dir.is_dir():
            raise RunError(f"--resume {resume}: no such run directory")
        cfg = load_config(args.config or run_dir / "config.yaml", args.overrides)
    if cfg.run.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device=cuda: torch sees no CUDA device here; use run.device=cpu "
                          "(or auto)")
    return cfg, run_dir, checkpoint


def finished_summary(run_dir: Path, cfg: Config) -> dict | None:
    """RUN_DIR's summary.json when the run finished the schedule `cfg` asks for (resuming it
    would change nothing but its files), else None."""
    path = run_dir / "summary.json"
    if not path.is_file() or not (run_dir / "config.yaml").is_file():
        return None
    summary = json.loads(path.read_text())
    same = load_config(run_dir / "config.yaml").schedule == cfg.schedule
    return summary if same and summary.get("status") in FINISHED else None


def finished_line(run_dir: Path, summary: dict) -> str:
    split = summary.get("reported_split", "test")
    error = summary.get(f"{split}_top1_error")
    score = f", {split} error {error:.2f}%" if error is not None else ""
    return (f"{run_dir} finished already ({summary['status']} at iteration "
            f"{summary.get('iterations')}{score}): nothing to resume, nothing changed; to "
            f"evaluate it again: {shell_command('train/evaluate.py', run_dir)}")


def new_run_dir(cfg: Config, config_path: str | None) -> Path:
    stem = Path(config_path).stem if config_path else "run"
    return Path(cfg.run.out_dir) / f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def clear_for_new_run(run_dir: Path) -> None:
    """A new run never writes over another's files: a directory with a checkpoint is refused;
    the records of a run that died before its first checkpoint (nothing to resume) are moved
    into RUN_DIR/aborted-<n>."""
    if any((run_dir / name).is_file() for name in (LAST, PREVIOUS)):
        if (run_dir / "summary.json").is_file():
            raise ConfigError(f"{run_dir} holds a finished run; pick another run.name (e.g. "
                              f"run.name={run_dir.name}-2) or move it away")
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume "
                          f"{run_dir} or pick another run.name")
    aside = set_aside(run_dir)
    if aside is not None:
        tqdm.write(f"note: {run_dir} held the records of a run that saved no checkpoint; "
                   f"moved them to {aside}")


def seed_everything(seed: int) -> None:
    """The same seed on every rank: every rank builds the same initial model."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


class StopFlag:
    """First SIGINT/SIGTERM: finish the step, checkpoint, exit. Second: abort at once.

    hold_term: when an error ends training, SIGTERM is ignored from then on. Under torchrun a
    rank whose peer failed is on its way out with its one-line message, but the launcher's
    SIGTERM (sent within 0.1 s of the peer's exit) would kill it during its teardown, message
    unsaid; torchrun still SIGKILLs it 30 s later should the teardown hang."""

    def __init__(self, hold_term: bool = False):
        self.requested = False
        self.previous = {}
        self.hold_term = hold_term

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

    def __exit__(self, exc_type, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        if exc_type is not None and self.hold_term:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path | None, resume: bool = False,
                 config_path: str | None = None, checkpoint: Path | None = None):
        """resume: continue run_dir from `checkpoint`, or from its last.pt (else last.prev.pt)."""
        started = time.perf_counter()
        self.cfg = cfg
        self.writer = ckpt.CheckpointWriter()
        self.env = distributed.setup(cfg.run.device)
        self.run_dir, self.lock = self.create_run_dir(run_dir, config_path, resume)
        try:
            resumed = self.load_resumed(checkpoint) if resume else None
            self.precision = self.configure_device()
            self.plan_step()  # a step mode this device cannot run fails before the loaders
            self.train_loader, self.val_loader = self.create_loaders()
            self.total_iters = total_iterations(cfg.schedule, len(self.train_loader))
            self.plan = self.plan_step(self.total_iters)
            self.raw_model, self.model, self.eval_model = self.create_model()
            self.optimizer, self.schedule = self.create_optimizer()
            self.step = TrainStep(self.model, self.optimizer, self.precision, self.env.device,
                                  graph=self.plan.graph, mark_step=self.plan.mark_step)
            self.state, self.stopper = TrainState(), EarlyStopper(cfg.run.patience)
            self.watch = SpeedWatch(say=self.say, window=min(WINDOW, len(self.train_loader)))
            self.best, self.time_to_target = None, None
            if resumed is not None:
                self.restore(resumed)
            self.log = self.create_logger(resumed is not None)
        except BaseException:
            self.release()
            raise
        self.clock0 = time.perf_counter() - self.state.elapsed
        self.setup_time = self.clock0 + self.state.elapsed - started  # this process's

    # ---- set-up, in the order __init__ calls it
    def create_run_dir(self, run_dir: Path | None, config_path: str | None,
                       resume: bool) -> tuple[Path, RunLock | None]:
        """Rank 0 names the run directory (a timestamp unless run.name is set), locks it (one
        run at a time) and, for a new run, clears it (clear_for_new_run); every rank gets the
        name, or rank 0's error. self.created: the folders this made (release() removes them
        if the run leaves nothing in them)."""
        self.created, held = [], []

        def create() -> Path:
            path = run_dir or new_run_dir(self.cfg, config_path)
            self.created = [p for p in (path, *path.parents) if not p.exists()]
            lock = RunLock(path)
            try:
                if not resume:
                    clear_for_new_run(path)
            except BaseException:
                lock.release()
                raise
            held.append(lock)
            return path

        run_dir = distributed.from_rank0(create)
        self.cfg.run.out_dir, self.cfg.run.name = str(run_dir.parent), run_dir.name
        return run_dir, (held[0] if held else None)

    def load_resumed(self, checkpoint: Path | None) -> dict:
        """The checkpoint to continue from, read by rank 0 and sent to every rank."""
        def load() -> dict:
            if checkpoint is not None:
                return ckpt.load_checkpoint(checkpoint)
            return ckpt.load_for_resume(
                self.run_dir, lambda message: print(message, file=sys.stderr, flush=True))
        return distributed.from_rank0(load)

    def configure_device(self):
        if self.cfg.run.threads:
            torch.set_num_threads(self.cfg.run.threads)
        if self.env.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        return precision(self.cfg, self.env.device)

    def plan_step(self, iterations: int | None = None) -> StepPlan:
        run = self.cfg.run
        try:
            return plan_step(run.compile, run.cuda_graph, self.env.device, self.env.world_size,
                             self.precision.amp_dtype, iterations)
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def loader(self, split: str):
        """Each rank reads its own share; augmentation is seeded by (seed, epoch, rank)."""
        return build_loader(self.cfg.data, split, self.env.device, self.env.rank,
                            self.env.world_size, seed=self.cfg.run.seed)

    def create_loaders(self):
        select = selection_split(self.cfg.data)
        self.class_names = class_names(self.cfg.data)  # per-class accuracy in the report
        return self.loader("train"), (self.loader(select) if select else None)

    def create_model(self):
        """(raw model, the one trained: compiled and DDP-wrapped, the one evaluated: eager
        beside a CUDA-graph step, whose capture owns the compiled model's buffers)."""
        seed_everything(self.cfg.run.seed)
        raw = model_for(self.cfg, self.env.device)
        model = torch.compile(raw, mode=self.plan.compile) if self.plan.compile else raw
        if self.env.distributed:
            cuda = self.env.device.type == "cuda"
            model = DDP(model, device_ids=[self.env.local_rank] if cuda else None)
        if self.plan.graph:
            return raw, model, raw
        return raw, model, model.module if self.env.distributed else model  # eval: no DDP sync

    def create_optimizer(self):
        return (build_optimizer(self.raw_model, self.cfg.optim, self.env.device),
                LRSchedule(self.cfg.schedule, self.cfg.optim.lr, len(self.train_loader)))

    def restore(self, resumed: dict) -> None:
        ckpt.load_model_state(self.raw_model, resumed["model"])
        self.optimizer.load_state_dict(resumed["optimizer"])
        self.schedule.load_state_dict(resumed["schedule"])
        self.step.scaler.load_state_dict(resumed["scaler"])
        if "speed" in resumed:
            self.watch.load_state_dict(resumed["speed"])
        self.state.load_state_dict(resumed["state"])
        self.state.checkpointed = self.state.iteration  # where it was saved
        self.stopper.load_state_dict(resumed["stopper"])
        progress = resumed["progress"]
        self.best, self.time_to_target = progress["best"], progress["time_to_target"]
        ckpt.set_rng_state(resumed["rng"])

    def create_logger(self, resumed: bool) -> MetricsLog | None:
        if not self.env.is_main:
            return None
        cfg, state = self.cfg, self.state
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text(dump_config(cfg), self.run_dir / "config.yaml")
        where = f"resumed at iteration {state.iteration}" if resumed else "new run"
        tqdm.write(f"{self.run_dir} ({where}): {cfg.model.name} on {cfg.data.dataset} "
                   f"[{cfg.data.backend}], {self.env.device} x{self.env.world_size}, "
                   f"{len(self.train_loader)} it/epoch, {self.total_iters} iterations; "
                   f"{self.precision.label}, {self.plan.why}")
        request = self.train_loader.request
        if request.imagenet_style and request.data.backend != "synthetic":
            tqdm.write(f"records {'streamed' if request.cache.stream else 'in memory'} "
                       f"({request.cache.why})")
        return MetricsLog(self.run_dir, resume_iter=state.iteration if resumed else None)

    # ---- the loop
    def record(self, kind: str, **values) -> None:
        if self.log is not None:
            try:
                self.log.log(kind, self.state.iteration, epoch=self.state.epoch, **values)
            except RunError as error:  # a full disk: metrics.jsonl ends in a whole record
                raise self.resumable(error) from error

    def resumable(self, error: RunError) -> RunError:
        """A full disk's error, with the way on when a whole checkpoint is on disk."""
        if not (self.run_dir / LAST).is_file():
            return RunError(str(error))
        return RunError(f"{error}; then --resume {self.run_dir} continues from its last "
                        "checkpoint")

    def say(self, message: str) -> None:
        """A one-time notice of the run (speed drift, recompiles): console and metrics."""
        if self.env.is_main:
            tqdm.write(message)
            self.record("event", message=message)

    def fit(self) -> Result:
        cfg, state = self.cfg, self.state
        settings = LoopSettings(
            total_iters=self.total_iters, log_every=cfg.run.log_every,
            ckpt_every=cfg.run.ckpt_every,
            progress=self.env.is_main and cfg.run.progress and sys.stderr.isatty())
        meter = Meter(self.env, self.watch)
        status, val = "completed", None
        try:
            with StopFlag(hold_term=self.env.distributed) as stop:
                while state.iteration < self.total_iters:
                    epoch = state.epoch
                    result = train_one_epoch(
                        self.step, self.train_loader, self.schedule, state, settings, meter,
                        RunHooks(on_log=lambda values: self.record("train", **values),
                                 on_checkpoint=self.save_checkpoint,
                                 stop_requested=lambda: stop.requested))
                    if result["stopped"]:
                        status = "interrupted"
                        break
                    epoch_done = state.next_epoch_if_done(len(self.train_loader))
                    finished = state.iteration >= self.total_iters
                    improved, evaluated = False, None
                    if self.val_loader is not None and (
                            finished or epoch_done and state.epoch % cfg.run.eval_every == 0):
                        with state.timed("eval_time"):
                            val, improved = self.validate()
                        evaluated = val
                    self.record("epoch", train_loss=result["loss"], train_error=result["error"],
                                lr=self.schedule.lr(state.iteration),
                                train_time=state.train_time)
                    self.save_checkpoint(best=improved)
                    if self.env.is_main:
                        tqdm.write(self.epoch_line(epoch, result, evaluated))
                    self.watch.warm()  # one epoch and its evaluation: compiled for both
                    if self.stopper.should_stop:
                        status = "early_stopped"
                        break
            self.watch.close()  # training is over: the final evaluations are not watched
        except NonFiniteLoss as error:
            self.checkpoints_written()
            where = (f"{self.run_dir / LAST} (iteration {state.checkpointed}) is the last "
                     "good checkpoint" if state.checkpointed
                     else "no checkpoint was written")
            message = f"stopping: {error}; {where}"
            self.record("event", message=message)
            if self.env.is_main:  # every rank stops here, at the same step (summed losses)
                print(message, file=sys.stderr, flush=True)
            return self.close(Result("nonfinite", self.run_dir, self.raw_model, None))
        self.checkpoints_written()
        if status == "interrupted":
            if self.env.is_main:
                tqdm.write(f"interrupted at iteration {state.iteration}; resume with: "
                           f"{resume_hint(self.run_dir, self.env)}")
            return self.close(Result(status, self.run_dir, self.raw_model, None))
        return self.close(Result(status, self.run_dir, self.raw_model, self.finish(status, val)))

    def validate(self) -> tuple[dict, bool]:
        """Evaluate on the selection split: plateau rule, best model (returns whether this is
        it), time to target."""
        state, target = self.state, self.cfg.run.target_error
        distributed.sync_buffers(self.raw_model, self.env)
        val = evaluate(self.eval_model, self.val_loader, self.precision, self.env,
                       self.class_names)
        self.schedule.on_eval(val["top1_error"])
        improved = self.stopper.step(val["top1_error"])
        if improved:
            self.best = {"iteration": state.iteration, "epoch": state.epoch, "val": val}
        if target is not None and self.time_to_target is None and val["top1_error"] <= target:
            self.time_to_target = {"seconds": time.perf_counter() - self.clock0,
                                   "iteration": state.iteration, "epoch": state.epoch}
        self.record("val", **overall(val))
        return val, improved

    def save_checkpoint(self, best: bool = False) -> None:
        with self.state.timed("checkpoint_time"):
            if not ckpt.all_finite(self.raw_model):  # every rank: they hold the same weights
                raise NonFiniteLoss(f"weights are not finite at iteration {self.state.iteration}")
            self.state.elapsed = time.perf_counter() - self.clock0
            self.state.checkpointed = self.state.iteration
            if not self.env.is_main:
                return
            payload = {
                "model": self.raw_model.state_dict(), "model_name": self.cfg.model.name,
                "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "scaler": self.step.scaler.state_dict(), "state": self.state.state_dict(),
                "stopper": self.stopper.state_dict(), "config": to_dict(self.cfg),
                "progress": {"best": self.best, "time_to_target": self.time_to_target},
                "rng": ckpt.rng_state(), "speed": self.watch.state_dict(),
            }
            files = [(self.run_dir / LAST, self.run_dir / PREVIOUS)]
            if best:
                files.append((self.run_dir / BEST, None))
            try:
                self.writer.save(payload, files)  # written while the next steps run
            except RunError as error:  # a full disk: the files on disk are whole
                raise self.resumable(error) from error

    def checkpoints_written(self) -> None:
        """Wait until the last checkpoint is on disk (before reading it, reporting it or
        exiting); a write that failed raises here."""
        with self.state.timed("checkpoint_time"):
            try:
                self.writer.wait()
            except RunError as error:
                raise self.resumable(error) from error

    def epoch_line(self, epoch: int, result: dict, val: dict | None) -> str:
        state = self.state
        parts = [f"epoch {epoch:3d}", f"iter {state.iteration}",
                 f"train loss {result['loss']:.4f} err {result['error']:5.2f}%"]
        if val is not None:
            parts.append(f"val err {val['top1_error']:5.2f}% (top-5 {val['top5_error']:.2f}%)")
        parts += [f"lr {self.schedule.lr(state.iteration):.3g}",
                  f"{state.images / max(state.train_time, 1e-9):.0f} img/s",
                  f"data wait {100 * state.data_wait / max(state.train_time, 1e-9):.0f}%",
                  f"{time.perf_counter() - self.clock0:.0f}s"]
        return " | ".join(parts)

    # ---- the end
    def report(self, final_val: dict | None) -> tuple[str, dict, dict]:
        """(report split, the final model's numbers on it, the best model's)."""
        split = report_split(self.cfg.data)
        if split == selection_split(self.cfg.data):  # ImageNet: already evaluated, no rerun
            return split, final_val, (self.best or {}).get("val", final_val)
        distributed.sync_buffers(self.raw_model, self.env)
        loader = self.loader(split)
        final = evaluate(self.eval_model, loader, self.precision, self.env, self.class_names)
        self.record(split, which="final", **overall(final))
        best = final
        if self.best is not None and self.best["iteration"] != self.state.iteration:
            final_state = {k: v.clone() for k, v in self.raw_model.state_dict().items()}
            best_model = distributed.from_rank0(
                lambda: ckpt.load_checkpoint(self.run_dir / BEST)["model"])
            ckpt.load_model_state(self.raw_model, best_model)
            best = evaluate(self.eval_model, loader, self.precision, self.env, self.class_names)
            self.record(split, which="best", **overall(best))
            self.raw_model.load_state_dict(final_state)
        return split, final, best

    def finish(self, status: str, val: dict | None) -> dict | None:
        """The final and the best model on the report split, summary.json and curves.png."""
        cfg, state, env = self.cfg, self.state, self.env
        began = time.perf_counter()
        split, final, best = self.report(val)
        device_sync(env.device)
        report_time = time.perf_counter() - began
        if not env.is_main:
            return None
        if self.val_loader is None:  # nothing to choose by: the final model is the best
            ckpt.save_atomic(ckpt.load_checkpoint(self.run_dir / LAST), self.run_dir / BEST)
        wall = time.perf_counter() - self.clock0
        times = self.time_breakdown(wall, report_time)
        wait = state.data_wait / max(state.train_time, 1e-9)
        records = read_metrics(self.run_dir)
        busy = gpu_busy(records)
        tta = self.time_to_target
        device = torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else "cpu"
        summary = {
            "run": self.run_dir.name, "status": status, "model": cfg.model.name,
            "dataset": cfg.data.dataset, "backend": cfg.data.backend, "device": device,
            "world_size": env.world_size, "global_batch": cfg.data.batch_size * env.world_size,
            "iterations": state.iteration,
            "epochs": round(state.iteration / len(self.train_loader), 3),
            "reported_split": split,
            f"{split}_top1_error": final["top1_error"], f"{split}_top5_error": final["top5_error"],
            "final": {"val": overall(val), split: overall(final)},
            "best": None if self.best is None else {**self.best, "val": overall(self.best["val"]),
                                                    split: overall(best)},
            "per_class_accuracy": final.get("per_class_accuracy"),  # the final model's
            "images_per_sec": state.images / max(state.train_time, 1e-9),
            "step": self.plan.why, "speed": self.watch.summary(),
            "data_wait_fraction": wait, "gpu_busy_fraction": busy,
            "data_verdict": data_verdict(wait, busy),
            "train_time_s": state.train_time, "wall_time_s": wall, "time_s": times,
            "target_error": cfg.run.target_error,
            "time_to_target_s": None if tta is None else tta["seconds"],
            "iteration_to_target": None if tta is None else tta["iteration"],
            "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
        }
        if split == selection_split(cfg.data):
            summary["note"] = NO_TEST_NOTE.format(datasets.get(cfg.data.dataset).title)
        write_json(summary, self.run_dir / "summary.json")
        plot_curves(records, self.run_dir / "curves.png",
                    title=f"{cfg.model.name} {cfg.data.dataset}")
        tqdm.write(f"done ({status}): {split} error {final['top1_error']:.2f}% "
                   f"(top-5 {final['top5_error']:.2f}%), {summary['images_per_sec']:.0f} img/s, "
                   f"{wall:.0f}s ({time_line(times)})\n  curves:  {self.run_dir / 'curves.png'}\n"
                   f"  summary: {self.run_dir / 'summary.json'}")
        if data_bound(wait, busy):
            tqdm.write(summary["data_verdict"])
        return summary

    def time_breakdown(self, wall: float, report_time: float) -> dict:
        """Where the wall time went, in seconds: training (compilation included), evaluation
        during training, checkpoints, the final report's evaluations, the rest (epoch
        bookkeeping, logs); and this process's set-up before the clock started (not in wall)."""
        state = self.state
        times = {"train": state.train_time, "eval": state.eval_time,
                 "checkpoint": state.checkpoint_time, "report": report_time}
        return {**times, "other": max(wall - sum(times.values()), 0.0),
                "setup": self.setup_time}

    def close(self, result: Result) -> Result:
        self.watch.close()
        if self.log is not None:
            self.log.close()
        self.release()
        distributed.cleanup(self.env)
        return result

    def release(self) -> None:
        """Finish the checkpoint being written, unlock the run directory (the end of the
        process would, too). A run that failed before writing anything leaves no folder
        behind."""
        self.writer.close()
        if self.lock is not None:
            remove_unused(self.run_dir, self.created)
            self.created = []
            self.lock.release()


def time_line(times: dict) -> str:
    """'train 186 s, eval 6.1 s, ...': the time breakdown, for the last line of a run."""
    return ", ".join(f"{name} {seconds:.2g} s" if seconds < 10 else f"{name} {seconds:.0f} s"
                     for name, seconds in times.items())


def remove_unused(run_dir: Path, created: list[Path]) -> None:
    """If the run left nothing but its lock in run_dir: remove the lock (while still held, so
    no other run takes it in between) and the folders the run created, innermost first."""
    if not run_dir.is_dir() or {p.name for p in run_dir.iterdir()} != {LOCK}:
        return
    (run_dir / LOCK).unlink()
    for folder in created:
        try:
            folder.rmdir()
        except OSError:  # not empty: someone else's now
            return


def resume_hint(run_dir: Path, env) -> str:
    if env.distributed:
        return f"the same torchrun command with --resume {run_dir} in place of the config"
    return shell_command("train/run.py", "--resume", run_dir)


def read_run(args) -> tuple[Config, Path | None, Path | None, dict | None]:
    """resolve_config's (config, run directory, checkpoint), and the summary of a finished run
    that --resume names (finished_summary)."""
    cfg, run_dir, checkpoint = resolve_config(args)
    finished = finished_summary(run_dir, cfg) if args.resume is not None else None
    return cfg, run_dir, checkpoint, finished


def main(argv=None) -> Result:
    args = parse_args(argv)
    distributed.join()  # first: whatever fails later fails inside the group, which sees it
    # rank 0 reads the config and the run directory; the others need neither on their disk
    cfg, run_dir, checkpoint, finished = distributed.from_rank0(lambda: read_run(args))
    if finished is not None:
        if distributed.launched()[0] == 0:
            print(finished_line(run_dir, finished), flush=True)
        distributed.cleanup()
        return Result("finished", run_dir, None, finished)
    trainer = Trainer(cfg, run_dir, args.resume is not None, args.config, checkpoint)
    try:
        return trainer.fit()
    finally:
        trainer.release()  # also when fit raises: another run in this process may follow


EXPECTED = (ConfigError, LoaderError, RunError, RecordsError, FileNotFoundError,  # one line
            ImportError)

if __name__ == "__main__":
    try:
        sys.exit(EXIT_CODES[main().status])
    except SystemExit:
        raise
    except BaseException as error:
        if distributed.launched()[2] > 1:  # end this rank now, with its message
            distributed.exit_failed(error, EXPECTED)
        if isinstance(error, EXPECTED):
            sys.exit(f"error: {error}")
        if isinstance(error, KeyboardInterrupt):  # a second Ctrl-C: last.pt stays valid
            sys.exit(130)
        raise
