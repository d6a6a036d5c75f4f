"""The fastest correct way to train on this CPU: bare SGD steps of one model on one batch,
fp32 vs bf16 autocast × eager vs torch.compile modes (× torch thread counts), channels_last
(the CPU default).

    python -m tools.benchmark.cpu_recipe [--model resnet20] [--batch 128] [--rounds 5]
        [--modes default,max-autotune-no-cudagraphs] [--threads 1,2]
        [--out bench/results] [--name cpu-recipe-DATE] [--note TEXT]

Every combination starts from the same weights; its first step is checked against fp32 eager
(loss and the cosine of the whole gradient) and timed apart: that step compiles, so its excess
over a steady step is the compile time. The timed rounds are interleaved (each round runs every
combination in turn) and each combination's speed is given as the median over rounds of its
ratio to fp32 eager in the same round, so a shared machine's load shifts all of them alike.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from models import build_model
from tools.benchmark import report
from tools.benchmark.measure import bare_steps
from train.build import cpu_bf16

CPU = torch.device("cpu")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def autocast_for(dtype):
    return lambda: torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def first_step(model, images, labels, optimizer, autocast) -> tuple[float, torch.Tensor, float]:
    """(loss, flattened gradient, seconds) of one SGD step."""
    start = time.perf_counter()
    with autocast():
        loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad = torch.cat([p.grad.flatten().float() for p in model.parameters()])
    optimizer.step()
    return loss.item(), grad, time.perf_counter() - start


def combinations(modes: list[str], threads: list[int]) -> list[dict]:
    """Every (threads, compile mode, precision); names say the threads only when several are
    compared."""
    rows = []
    for n in threads:
        for mode in ["eager", *modes]:
            for amp in PRECISIONS:
                name = f"{amp} {mode}" + (f", {n} thread{'s' * (n > 1)}" if len(threads) > 1
                                          else "")
                rows.append({"name": name, "amp": amp, "compile": mode, "threads": n})
    return rows


def measure(args) -> dict:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, 32, 32, generator=g).to(memory_format=torch.channels_last)
    labels = torch.randint(10, (args.batch,), generator=g)
    torch.manual_seed(0)
    base = build_model(args.model, 10).to(memory_format=torch.channels_last)
    rows = combinations(args.modes, args.threads)
    for row in rows:
        torch.set_num_threads(row["threads"])  # before compiling: inductor bakes it in
        model = copy.deepcopy(base)
        row["optimizer"] = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9,
                                           weight_decay=1e-4)
        row["model"] = model if row["compile"] == "eager" else \
            torch.compile(model, mode=None if row["compile"] == "default" else row["compile"])
        row["autocast"] = autocast_for(PRECISIONS[row["amp"]])
        print(f"{row['name']}: first step (compiles)", file=sys.stderr, flush=True)
        row["loss"], grad, row["first_step_s"] = first_step(
            row["model"], images, labels, row["optimizer"], row["autocast"])
        if row is rows[0]:
            reference_loss, reference_grad = row["loss"], grad
        row["loss_rel_diff"] = abs(row["loss"] - reference_loss) / abs(reference_loss)
        row["grad_cosine"] = F.cosine_similarity(grad, reference_grad, dim=0).item()
        bare_steps(row["model"], images, labels, row["optimizer"], args.warmup, CPU,
                   row["autocast"])
        row["seconds"] = []
    for r in range(args.rounds):
        for row in rows:
            torch.set_num_threads(row["threads"])
            row["seconds"].append(bare_steps(row["model"], images, labels, row["optimizer"],
                                             args.steps, CPU, row["autocast"]))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{row['name']} {args.batch * args.steps / row['seconds'][-1]:.0f} img/s"
            for row in rows), file=sys.stderr, flush=True)
    reference = rows[0]["seconds"]
    for row in rows:
        step = statistics.median(row["seconds"]) / args.steps
        row["images_per_s"] = args.batch / step
        row["rounds_images_per_s"] = [args.batch * args.steps / s for s in row["seconds"]]
        row["vs_fp32_eager"] = statistics.median(ref / s for ref, s in zip(reference,
                                                                            row["seconds"]))
        row["compile_s"] = max(row["first_step_s"] - step, 0.0)
        for key in ("model", "optimizer", "autocast", "seconds"):
            del row[key]
    return {"rows": rows, "fastest": max(rows, key=lambda r: r["vs_fp32_eager"])["name"]}


def markdown(result: dict) -> str:
    load = result["load_average"]
    s = result["settings"]
    lines = [f"# CPU training recipe: {result['machine']} ({result['date']})", "",
             f"- command: `{result['command']}`",
             f"- device: {result['device']}; native bf16: {result['native_bf16'] or 'none'}; "
             f"torch threads {', '.join(map(str, s['threads']))}",
             f"- load average (1/5/15 min): before {load['before']}, after {load['after']}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
             f"- {s['model']}, batch {s['batch']}, channels_last, SGD; {s['rounds']} interleaved "
             f"rounds of {s['steps']} steps after {s['warmup']} warm-up steps",
             "- speed: median over rounds of (fp32 eager's time ÷ this one's) in the same round; "
             "check: the first step from the same weights against fp32 eager", ""]
    lines += report.table("Bare train steps (images/s)", result["rows"], {
        "combination": ("<", lambda r: r["name"]),
        "images/s": (">", lambda r: report.number(r["images_per_s"])),
        "× fp32 eager": (">", lambda r: f"{r['vs_fp32_eager']:.2f}"),
        "per round": ("<", lambda r: ", ".join(f"{x:.0f}" for x in r["rounds_images_per_s"])),
        "compile s": (">", lambda r: f"{r['compile_s']:.1f}"),
        "loss diff": (">", lambda r: f"{r['loss_rel_diff']:.1e}"),
        "grad cosine": (">", lambda r: f"{r['grad_cosine']:.5f}")})[1:]
    lines += ["", f"Fastest: **{result['fastest']}**."]
    lines += [""] * bool(result["notes"]) + [f"- note: {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="steps per combination per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=lambda s: [int(n) for n in s.split(",")],
                        default=[torch.get_num_threads()], help="torch threads, comma-separated "
                        "to compare (default: torch's, %(default)s)")
    parser.add_argument("--modes", type=lambda s: [m for m in s.split(",") if m],
                        default=["default"], help="torch.compile modes, comma-separated "
                        "(empty: eager only)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--name", help="file stem; default cpu-recipe-<date>")
    parser.add_argument("--note", action="append", default=[])
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    before = report.load_average()
    started = report.now()
    result = {"command": "python -m tools.benchmark.cpu_recipe " + " ".join(
                  sys.argv[1:] if argv is None else argv),
              "date": started.isoformat(timespec="seconds"), "machine": report.machine_tag(CPU),
              "device": report.device_name(CPU), "native_bf16": cpu_bf16(),
              "versions": report.versions(),
              "settings": {k: v for k, v in vars(args).items() if k not in ("out", "name",
                                                                           "note")}}
    result.update(measure(args))
    result["load_average"] = {"before": before, "after": report.load_average()}
    result["notes"] = args.note
    name = args.name or f"cpu-recipe-{started.date().isoformat()}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
