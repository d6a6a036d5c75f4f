"""Everything only a GPU machine can show, in one command, ordered by value:

  1. the CUDA tests (pytest -m cuda);
  2. the benchmark (tools/bench.py: every installed backend, the ImageNet-format photo set built
     here, and CIFAR-10 when its records or tarball are there);
  3. the ResNet-32 CIFAR-10 paper schedule (configs/resnet32.yaml: 64k iterations of batch 128,
     native backend, run.compile=auto: compiled, one CUDA graph per step) timed end to end;
     its summary.json and curves.png are copied beside the benchmark results.

  make gpu-check CIFAR10_TAR=/path/to/cifar-10-python.tar.gz    # all three
  .venv/bin/python tools/gpu_check.py --cifar data/records/cifar10 --out DIR
  .venv/bin/python tools/gpu_check.py --skip paper              # tests and benchmark only
  make gpu-check ARGS=--smoke                                   # a CPU dry run, tiny sizes

CIFAR-10 comes from --cifar, --cifar-tar (converted here) or data/records/cifar10; without it the
paper part is skipped, and says so. The benchmark's photo set needs scikit-image's photos: on a
machine without scikit-image, run `make gpu-prepare` where it is installed and copy
build/photo-sources along. The parts' default time limits (--timeouts) fit in 10 minutes.

Writes OUT/<machine>-<date>.{json,md,png} (the benchmark), OUT/<machine>-<date>-resnet32/ and
OUT/<machine>-<date>-gpu-check.json (what ran, its exit status, seconds, and the goals); --smoke
writes OUT/<machine>-<date>-smoke*, never over the day's results. A part that fails or runs out
of time is recorded and the next one still runs; the exit status is then 1.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from tools.benchmark import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CIFAR = ROOT / "data" / "records" / "cifar10"
PAPER_CONFIG = "configs/resnet32.yaml"
SOURCES = ROOT / "build" / "photo-sources"  # carried to a GPU machine that lacks scikit-image
# One device call may run 10 minutes: the three parts fit in one (or --skip to split them).
GPU_TIMEOUTS = "90,210,280"
SMOKE_TIMEOUTS = "600,900,600"  # a busy 2-core CPU
GOALS = {"paper_minutes": 3.0, "paper_test_error": 7.5}
# The CPU dry run: the same command lines, a few iterations.
SMOKE_PAPER = ["schedule.total=24", "schedule.milestones=[12,18]", "data.batch_size=16",
               "data.eval_batch_size=64", "data.val_size=32", "run.log_every=4",
               "run.ckpt_every=0", "run.compile=false", "run.device=cpu"]


def bench_arguments(out: Path, stem: str, work: Path, cifar: Path | None, sources: str | None,
                    smoke: bool) -> list[str]:
    """tools/bench.py's arguments for the benchmark part (tests/test_bench.py runs the smoke
    benchmark with these, so that this dry run need not run it a second time)."""
    arguments = ["--out", str(out), "--name", stem, "--work", str(work / "bench")]
    arguments += ["--cifar", str(cifar)] if cifar else []
    arguments += ["--sources", sources] if sources else []
    return arguments + (["--smoke"] if smoke else [])


def run_part(name: str, command: list[str], timeout: float, log: Path) -> dict:
    """Run one part as a subprocess (its output teed to `log`); never raises."""
    print(f"== {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        try:
            proc = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    seconds = time.perf_counter() - start
    tail = log.read_text(errors="replace").splitlines()[-15:]
    print("\n".join(tail), f"\n== {name}: exit {rc} after {seconds:.0f} s", flush=True)
    return {"command": command, "exit": rc, "seconds": round(seconds, 1), "log": log.name,
            "tail": tail}


def cifar_records(args, work: Path) -> Path | None:
    if args.cifar:
        return Path(args.cifar)
    if not args.cifar_tar:
        return DEFAULT_CIFAR if (DEFAULT_CIFAR / "manifest.json").is_file() else None
    from tools.converter.cli import convert

    print(f"== converting {args.cifar_tar}", flush=True)
    return convert("cifar10", src=args.cifar_tar, out=work / "records", formats=["arrays"])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--work", default=str(ROOT / "build" / "gpu-check"))
    parser.add_argument("--cifar", help="CIFAR-10 records (tools/convert.py output; default "
                        "data/records/cifar10 when there)")
    parser.add_argument("--cifar-tar", help="the CIFAR-10 python tarball, converted here")
    parser.add_argument("--sources", default=str(SOURCES) if SOURCES.is_dir() else None,
                        help="photos for the set where scikit-image is missing (default "
                        f"{SOURCES.relative_to(ROOT)} when there; `python "
                        "tools/converter/photos.py --export-sources DIR` writes them)")
    parser.add_argument("--skip", default="", help="comma list of tests,bench,paper")
    parser.add_argument("--smoke", action="store_true", help="CPU dry run: tiny sizes")
    parser.add_argument("--timeouts", help="seconds for tests,bench,paper (default "
                        f"{GPU_TIMEOUTS}; --smoke: {SMOKE_TIMEOUTS})")
    args = parser.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    timeouts = args.timeouts or (SMOKE_TIMEOUTS if args.smoke else GPU_TIMEOUTS)
    timeouts = dict(zip(("tests", "bench", "paper"), map(float, timeouts.split(","))))
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    smoke = "-smoke" if args.smoke else ""  # never over the day's real results
    stem = f"{report.machine_tag(device)}-{report.now():%Y-%m-%d}{smoke}"
    result = {"device": report.device_name(device), "versions": report.versions(),
              "load_average_before": report.load_average(), "smoke": args.smoke,
              "goals": GOALS, "parts": {}}
    python = sys.executable
    start = time.perf_counter()

    if "tests" not in skip:
        result["parts"]["tests"] = run_part(
            "CUDA tests", [python, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"],
            timeouts["tests"], work / "tests.log")
    cifar = cifar_records(args, work)
    if "bench" not in skip:
        command = [python, "tools/bench.py",
                   *bench_arguments(out, stem, work, cifar, args.sources, args.smoke)]
        result["parts"]["bench"] = run_part("benchmark", command, timeouts["bench"],
                                            work / "bench.log")
        result["parts"]["bench"]["results"] = f"{stem}.json"
    if "paper" not in skip:
        result["parts"]["paper"] = paper_schedule(args, cifar, out / f"{stem}-resnet32", work,
                                                  python, timeouts["paper"])
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["load_average_after"] = report.load_average()
    path = out / f"{stem}-gpu-check.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    if failed(result):
        print(f"error: failed: {', '.join(failed(result))}; the logs are in {work}",
              file=sys.stderr)
    return result


def paper_schedule(args, cifar: Path | None, dest: Path, work: Path, python: str,
                   timeout: float) -> dict:
    """ResNet-32, CIFAR-10, the paper's 64k iterations, native backend, compiled; timed."""
    if cifar is None:
        why = ("no CIFAR-10 (give --cifar or --cifar-tar, CIFAR10_TAR= to make, or convert it "
               "with make dataset-cifar10)")
        print(f"== ResNet-32 paper schedule: skipped: {why}", flush=True)
        return {"exit": "skipped", "why": why}
    overrides = [f"data.root={cifar}", "data.backend=native", "run.compile=auto",
                 f"run.out_dir={work / 'runs'}", "run.name=resnet32-paper", "run.progress=false"]
    if args.smoke:
        overrides += SMOKE_PAPER
    shutil.rmtree(work / "runs" / "resnet32-paper", ignore_errors=True)
    part = run_part("ResNet-32 paper schedule", [python, "train/run.py", PAPER_CONFIG,
                                                 *overrides], timeout, work / "paper.log")
    run_dir = work / "runs" / "resnet32-paper"
    if (run_dir / "summary.json").is_file():
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("summary.json", "curves.png", "config.yaml"):
            shutil.copy2(run_dir / name, dest / name)
        summary = json.loads((run_dir / "summary.json").read_text())
        part.update({"results": dest.name, "test_error": summary.get("test_top1_error"),
                     "wall_minutes": round(summary["wall_time_s"] / 60, 2),
                     "images_per_sec": summary["images_per_sec"],
                     "data_wait_fraction": summary.get("data_wait_fraction")})
        print(f"ResNet-32 paper schedule: {part['test_error']:.2f}% test error in "
              f"{part['wall_minutes']:.1f} min (goals: <= {GOALS['paper_test_error']}%, "
              f"<= {GOALS['paper_minutes']} min)", flush=True)
    return part


def failed(result: dict) -> list[str]:
    """'<part> (exit <status>, log <file>)' of each part that failed or ran out of time."""
    return [f"{name} (exit {part['exit']}, log {part['log']})"
            for name, part in result["parts"].items() if part["exit"] not in (0, "skipped")]


if __name__ == "__main__":
    sys.exit(1 if failed(main()) else 0)
