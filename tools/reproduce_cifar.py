"""The paper's CIFAR-10 table and Figure 6 from scratch, one run after another:

  .venv/bin/python tools/reproduce_cifar.py [--data data/records/cifar10] [--out DIR]
      [--budget N] [--models resnet20,plain20,...] [key=value ...]

ResNet-20/32/44/56/110 (configs/resnetN.yaml, option A) and plain-20/32/44/56/110
(configs/fig6_plainN.yaml), each pair by depth, on whatever device run.device=auto finds. Each
run lives in OUT/<model>; rerunning the command skips finished runs and resumes an interrupted
one from its last.pt. When every run is finished or has failed, it writes OUT/table.md
(tools/table.py) and OUT/figure6_plain.png and OUT/figure6_resnet.png (tools/compare.py).
--budget N: a smoke test, each run N iterations at a constant lr on the CPU, in its own folder
(OUT defaults to runs/reproduce-cifar-budgetN, the full runs' to runs/reproduce-cifar). Before
training anything, every OUT/<model> that holds a run of another schedule (a smoke run, when
this is the full one) is refused, named: the table never mixes them.
key=value overrides apply to every run (e.g. data.backend=ffcv run.compile=default).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from records.format import RecordsError  # noqa: E402
from tools.compare import compare  # noqa: E402
from tools.runs import UNITS, read_run  # noqa: E402
from tools.table import build_rows, render  # noqa: E402
from train import run as trainer  # noqa: E402
from train.config import ConfigError, ScheduleConfig, load_config  # noqa: E402
from train.files import RunError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEPTHS = (20, 32, 44, 56, 110)
CONFIGS = {name: ROOT / "configs" / f"{prefix}{depth}.yaml"
           for depth in DEPTHS
           for name, prefix in ((f"resnet{depth}", "resnet"), (f"plain{depth}", "fig6_plain"))}


def budget_overrides(iterations: int) -> list[str]:
    return [f"schedule.total={iterations}", "schedule.unit=iter", "schedule.milestones=[]",
            "schedule.warmup=0", "run.device=cpu", "run.ckpt_every=0",
            f"run.log_every={max(1, iterations // 10)}"]


def new_run_args(name: str, out: Path, data: str, overrides: list[str]) -> list[str]:
    return [str(CONFIGS[name]), f"data.root={data}", f"run.out_dir={out}", f"run.name={name}",
            *overrides]


def describe(schedule: ScheduleConfig) -> str:
    lr = (f"lr x{schedule.gamma} at {list(schedule.milestones)}" if schedule.milestones
          else "constant lr")
    return f"{schedule.total} {UNITS[schedule.unit]}, {lr}"


def check_existing(names: list[str], out: Path, data: str, overrides: list[str]) -> None:
    """Refuse, before anything trains, an OUT/<name> holding a run of another schedule than
    this command's (a --budget smoke run found by the full one, or the other way round)."""
    for name in names:
        run_dir = out / name
        if not (run_dir / "config.yaml").is_file():
            continue
        held = load_config(run_dir / "config.yaml").schedule
        wanted = load_config(CONFIGS[name], new_run_args(name, out, data, overrides)[1:])
        if held != wanted.schedule:
            raise ConfigError(
                f"{run_dir} holds a run of another schedule ({describe(held)}; this command "
                f"trains {describe(wanted.schedule)}): move it away, or give --out another "
                "folder")


def train_one(name: str, out: Path, data: str, overrides: list[str]) -> str:
    """Train (or resume, or skip) OUT/<name>; returns its status."""
    run_dir = out / name
    if (run_dir / "summary.json").is_file() and read_run(run_dir).finished:
        print(f"{name}: finished already ({run_dir})", flush=True)
        return "completed"
    if (run_dir / "last.pt").is_file():
        argv = ["--resume", str(run_dir), *overrides]
    else:
        argv = new_run_args(name, out, data, overrides)
    print(f"{name}: {trainer.shell_command('train/run.py', *argv)}", flush=True)
    return trainer.main(argv).status


def write_outputs(out: Path, names: list[str]) -> None:
    dirs = [out / n for n in names if (out / n / "config.yaml").is_file()]
    text = render(*build_rows(dirs))
    (out / "table.md").write_text(text)
    print(text)
    for family in ("plain", "resnet"):
        members = [d for d in dirs if d.name.startswith(family)]
        if members:
            title = f"{'plain' if family == 'plain' else 'ResNet'} nets, CIFAR-10"
            compare(members, out / f"figure6_{family}.png", x="iter", title=title)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/records/cifar10", help="CIFAR-10 records")
    parser.add_argument("--out", type=Path, help="default: runs/reproduce-cifar, or "
                        "runs/reproduce-cifar-budgetN with --budget N")
    parser.add_argument("--budget", type=int, metavar="N",
                        help="smoke test: N iterations per run, constant lr, on the CPU")
    parser.add_argument("--models", default=",".join(CONFIGS),
                        help=f"comma-separated subset of {','.join(CONFIGS)}")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    names = args.models.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {list(CONFIGS)}")
    if args.budget is not None and args.budget < 1:
        parser.error(f"--budget {args.budget}: must be >= 1")
    overrides = (budget_overrides(args.budget) if args.budget else []) + args.overrides
    if args.out is None:
        args.out = Path("runs/reproduce-cifar" + (f"-budget{args.budget}" if args.budget else ""))
    check_existing(names, args.out, args.data, overrides)
    if args.budget:
        print(f"smoke run (--budget {args.budget}): in {args.out}", flush=True)
    failed = []
    for name in names:
        status = train_one(name, args.out, args.data, overrides)
        if status == "interrupted":
            print(f"interrupted: rerun the same command to resume {args.out / name}")
            return 130
        if status not in ("completed", "early_stopped"):
            failed.append(f"{name} ({status})")
    write_outputs(args.out, names)
    if failed:
        print(f"failed: {', '.join(failed)}; see their run directories", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ConfigError, RunError, RecordsError, FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
