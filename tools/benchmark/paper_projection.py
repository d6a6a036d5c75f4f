"""The paper schedule's wall time, projected per step mode: ResNet-32 on CIFAR-10, 64,000
iterations of batch 128 (configs/resnet32.yaml), from each mode's warm-up (compilation, CUDA
graph capture) plus its steady step time plus one evaluation of the 5k val split per epoch.

  python -m tools.benchmark.paper_projection [--modes eager,graph,...] [--steps 300] [--out F]

Each mode runs in its own process with an empty torch.compile cache (a user's first run), on the
synthetic loader (the step alone: the native CIFAR loader's cost is the e2e row of the
benchmark). Modes: eager, default and reduce-overhead (torch.compile), graph (the whole step as
one CUDA graph, eager kernels) and graph+default (a compiled model inside the step's graph).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[2])

ROOT = Path(__file__).resolve().parents[2]
MODES = {  # name: (run.compile, run.cuda_graph)
    "eager": (False, False),
    "default": ("default", False),
    "reduce-overhead": ("reduce-overhead", False),
    "graph": (False, True),
    "graph+default": ("default", True),
}
PAPER = {"iterations": 64000, "batch": 128, "epochs": 182, "val": 5000}


def measure_mode(mode: str, device: str, steps: int, warmup: int) -> dict:
    """In this process: warm-up seconds (first `warmup` steps, compilation and capture
    included), steady ms/step over `steps` more, one val pass's seconds."""
    import torch

    from pipelines import build_loader
    from pipelines.spec import DataConfig
    from tools.benchmark import measure
    from train.distributed import DistEnv
    from train.loop import device_sync, evaluate

    compile_mode, graph = MODES[mode]
    device = torch.device(device)
    data = DataConfig(dataset="cifar10", root=measure.NO_RECORDS, backend="synthetic",
                      batch_size=PAPER["batch"], eval_batch_size=1000)
    settings = measure.RunSettings(device=str(device), compile=compile_mode, cuda_graph=graph)
    cfg = measure.run_config(data, "resnet32", settings, warmup + steps)
    start = time.perf_counter()
    trainee = measure.Trainee(cfg, device)
    loader = build_loader(cfg.data, "train", device)
    trainee.train(loader, warmup, log_every=warmup)
    device_sync(device)
    warm_s = time.perf_counter() - start
    t0 = time.perf_counter()
    trainee.train(loader, steps, log_every=steps)
    device_sync(device)
    step_ms = 1000 * (time.perf_counter() - t0) / steps
    val = build_loader(cfg.data, "val", device)  # synthetic: 5k images in batches of 1000
    eval_model = trainee.raw if trainee.plan.graph else trainee.step.model
    evaluate(eval_model, val, trainee.precision, DistEnv(0, 0, 1, device))  # warm
    t0 = time.perf_counter()
    evaluate(eval_model, val, trainee.precision, DistEnv(0, 0, 1, device))
    device_sync(device)
    eval_s = time.perf_counter() - t0
    projected = (warm_s + (PAPER["iterations"] - warmup) * step_ms / 1000
                 + PAPER["epochs"] * eval_s)
    return {"mode": mode, "step": trainee.plan.why, "warmup_steps": warmup,
            "warmup_s": warm_s, "step_ms": step_ms, "eval_s": eval_s,
            "images_per_s": PAPER["batch"] * 1000 / step_ms,
            "projected_minutes": projected / 60}


def run_modes(modes: list[str], device: str, steps: int, warmup: int) -> list[dict]:
    """Each mode in a fresh process with a fresh compile cache; a failure is a row too."""
    rows = []
    for mode in modes:
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache,
                   "TRITON_CACHE_DIR": str(Path(cache) / "triton")}
            command = [sys.executable, "-m", "tools.benchmark.paper_projection", "--one", mode,
                       "--device", device, "--steps", str(steps), "--warmup", str(warmup)]
            print(f"paper projection: {mode} ...", flush=True)
            proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode == 0 and lines:
            row = json.loads(lines[-1])
        else:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            row = {"mode": mode, "failed": f"exit {proc.returncode}: {tail[0][:300]}"}
        print("  " + (f"{row['step_ms']:.2f} ms/step, warm-up {row['warmup_s']:.0f} s, "
                      f"projected {row['projected_minutes']:.2f} min" if "step_ms" in row
                      else row["failed"]), flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> list[dict]:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_mode(args.one, args.device, args.steps, args.warmup)))
        return []
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}")
    rows = run_modes(modes, args.device, args.steps, args.warmup)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    if any("failed" in row for row in rows):
        sys.exit(f"paper projection: {sum('failed' in r for r in rows)} mode(s) failed")
    return rows


if __name__ == "__main__":
    main()
