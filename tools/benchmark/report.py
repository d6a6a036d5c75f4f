"""The benchmark's results: machine facts, then <machine>-<date>.json, .md and .png.

The JSON is the record (SCHEMA lists its top-level keys); the Markdown and the chart are views.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch

PACKAGES = ("torch", "torchvision", "numpy", "pillow", "ffcv", "nvidia-dali-cuda130", "numba",
            "opencv-python")
SCHEMA = ("command", "date", "machine", "device", "device_type", "cores", "versions",
          "torch_threads", "load_average", "busy", "settings", "datasets", "loaders", "e2e",
          "trainer_vs_bare", "layouts", "paper", "conversion", "notes")
BUSY = 0.5  # load average per core above which the numbers are suspect


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {cores()} CPU cores"
    return f"{cpu_model()} ({cores()} cores usable, no GPU)"


def machine_tag(device: torch.device) -> str:
    """A short file-name-safe machine name: 'h200-16c', 'cpu-2c'."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).lower().replace("nvidia", "")
        words = re.findall(r"[a-z0-9]+", name)
        base = next((w for w in words if re.search(r"\d", w)), words[-1] if words else "gpu")
    else:
        base = "cpu"
    return f"{base}-{cores()}c"


def load_average() -> list[float] | None:
    """The machine's 1/5/15-minute load: how much else was running."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def is_busy(load: list[float] | None) -> bool:
    return load is not None and load[0] > BUSY * cores()


def versions() -> dict:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def now() -> datetime:
    return datetime.now(UTC)


def record(args, argv, device: torch.device, load_before, settings, sizes, datasets,
           parts: dict, conversion: dict | None, notes: list[str]) -> dict:
    """The results' JSON (its keys: SCHEMA), with this exact command and the load after."""
    stamp = now()
    command = shlex.join(["python", "tools/bench.py", *(sys.argv[1:] if argv is None else argv)])
    return {
        "command": command, "date": stamp.isoformat(timespec="seconds"),
        "machine": machine_tag(device), "device": device_name(device),
        "device_type": device.type, "cores": cores(), "versions": versions(),
        "torch_threads": torch.get_num_threads(),
        "load_average": {"before": load_before, "after": load_average()},
        "busy": is_busy(load_before),  # after: includes the benchmark itself
        "settings": {"smoke": args.smoke, "workers": settings.workers, "amp": args.amp,
                     "compile": args.compile, "channels_last": settings.channels_last,
                     **vars(sizes)},
        "datasets": [d.as_dict() for d in datasets], **parts, "conversion": conversion,
        "notes": notes,
    }


def default_name(result: dict) -> str:
    """<machine>-<date>, and -smoke for a smoke run: it never replaces the day's results."""
    smoke = "-smoke" if result["settings"]["smoke"] else ""
    return f"{result['machine']}-{result['date'][:10]}{smoke}"


def write(result: dict, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.json", out / f"{name}.md", out / f"{name}.png"]
    paths[0].write_text(json.dumps(result, indent=2) + "\n")
    paths[1].write_text(markdown(result, paths[2].name))
    chart(result, paths[2])
    return paths


# ---------------------------------------------------------------- Markdown


FAILED = "failed: "  # the note of a part that failed (tools/benchmark/parts.py)


def failed(row: dict) -> bool:
    return row.get("note", "").startswith(FAILED)


def note(row: dict) -> str:
    """A row's note, a failure in bold."""
    text = row.get("note", "")
    return f"**failed**: {text.removeprefix(FAILED)}" if failed(row) else text


def number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def table(title: str, rows: list[dict], columns: dict) -> list[str]:
    """A markdown section, empty when there are no rows; columns: header -> (align, cell)."""
    if not rows:
        return []
    lines = ["", f"## {title}", "", "| " + " | ".join(columns) + " |",
             "|" + "|".join("---:" if align == ">" else "---" for align, _ in columns.values())
             + "|"]
    return lines + ["| " + " | ".join(cell(row) for _, cell in columns.values()) + " |"
                    for row in rows]


def markdown(result: dict, chart_name: str | None = None) -> str:
    load = result["load_average"]
    lines = [f"# respipe benchmark: {result['machine']} ({result['date']})", "",
             f"- command: `{result['command']}`",
             f"- device: {result['device']}; torch threads {result['torch_threads']}",
             f"- load average (1/5/15 min): before {load['before']}, after {load['after']}"
             + (" — **busy machine: numbers are low and noisy**" if result["busy"] else ""),
             "- versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
             "- settings: " + ", ".join(f"{k}={v}" for k, v in result["settings"].items()
                                        if v not in (None, "", False))]
    lines += [f"- note: {note}" for note in result["notes"]]
    if chart_name:
        lines += ["", f"![images/s per backend]({chart_name})"]
    lines += table("Loaders alone (images/s; × the torchvision DataLoader)", result["loaders"], {
        "dataset": ("<", lambda r: r["dataset"]), "split": ("<", lambda r: r["split"]),
        "backend": ("<", lambda r: r["backend"]),
        "images/s": (">", lambda r: number(r.get("images_per_s"))),
        "× torchvision": (">", lambda r: number(r.get("vs_torchvision"))),
        "notes": ("<", note)})
    lines += table("End to end through `train.loop.train_one_epoch` (loader efficiency = e2e ÷ "
                   "synthetic)", result["e2e"], {
        "dataset": ("<", lambda r: r["dataset"]), "model": ("<", lambda r: r["model"]),
        "batch": (">", lambda r: str(r["batch"])), "backend": ("<", lambda r: r["backend"]),
        "images/s": (">", lambda r: number(r.get("images_per_s"))),
        "efficiency": (">", lambda r: number(r.get("efficiency"))),
        "data wait": (">", lambda r: "" if r.get("data_wait") is None
                      else f"{100 * r['data_wait']:.0f}%"),
        "notes": ("<", note)})
    lines += table("The trainer against a bare eager loop (same model, batch, run; goal ≥ 0.95)",
                   result["trainer_vs_bare"], {
        "model": ("<", lambda r: r["model"]), "batch": (">", lambda r: str(r["batch"])),
        "trainer images/s": (">", lambda r: number(r["trainer_images_per_s"])),
        "bare images/s": (">", lambda r: number(r["bare_images_per_s"])),
        "trainer ÷ bare": (">", lambda r: f"{r['ratio']:.2f}")})
    lines += table("Memory layout, bare eager steps (interleaved rounds)", result["layouts"], {
        "model": ("<", lambda r: r["model"]), "batch": (">", lambda r: str(r["batch"])),
        "device": ("<", lambda r: r["device"]),
        "contiguous images/s": (">", lambda r: number(r["contiguous_images_per_s"])),
        "channels_last images/s": (">", lambda r: number(r["channels_last_images_per_s"])),
        "speed-up": (">", lambda r: f"{r['speedup']:.2f}×")})
    lines += table("Paper schedule, projected: ResNet-32, 64,000 iterations of batch 128 "
                   "(warm-up with compilation and capture + steady steps + 182 val passes; each "
                   "mode a fresh process, empty compile cache)", result.get("paper", []), {
        "mode": ("<", lambda r: r["mode"]), "step": ("<", lambda r: r.get("step", "")),
        "warm-up s": (">", lambda r: number(r.get("warmup_s"))),
        "ms/step": (">", lambda r: "" if r.get("step_ms") is None else f"{r['step_ms']:.2f}"),
        "images/s": (">", lambda r: number(r.get("images_per_s"))),
        "projected minutes": (">", lambda r: "" if r.get("projected_minutes") is None
                              else f"{r['projected_minutes']:.1f}"),
        "notes": ("<", note)})
    conv = result["conversion"]
    if conv:
        lines += converter_table(conv)
    return "\n".join(lines) + "\n"


def converter_table(conv: dict) -> list[str]:
    """One row per converted set: the whole job and each format's stage against the reference,
    and the peak memory (what it is: the paragraph under the table)."""
    ref, runs = conv["reference"], conv["runs"]
    stages = list(dict.fromkeys(name for run in runs for name in run["stages"]))

    def rate(d: dict) -> str:
        return f"{number(d['images_per_s'])} ({d['of_reference_x_cores']:.2f}×)"

    lines = ["", f"## ImageNet converter ({conv['workers']} processes; goal: the whole job ≥ 0.8 "
             "× reference × processes, peak memory flat as the set grows)", "",
             f"Reference ({ref['what']}): {number(ref['images_per_s'])} images/s. Each conversion "
             "runs in a fresh process, as `tools/convert.py` does: the whole job includes "
             "importing FFCV.", "",
             "| images | whole job s (FFCV import) | " + " | ".join(
                 f"{name} images/s (×)" for name in stages)
             + " | whole job images/s | × (reference × processes) | peak RSS MB: converter / "
             "largest worker |", "|---:|---:|" + "---:|" * len(stages) + "---:|---:|---:|"]
    for run in runs:
        cells = [rate(run["stages"][name]) if name in run["stages"] else "" for name in stages]
        rss = run["peak_rss_mb"]
        lines.append(f"| {run['images']:,} | {run['seconds']:.1f} ({run['import_seconds']:.1f}) | "
                     + " | ".join(cells) + f" | {number(run['images_per_s'])} | "
                     f"{run['of_reference_x_cores']:.2f} | {rss['main']:.0f} / "
                     f"{rss['largest_worker']:.0f} |")
    first = runs[0]["peak_rss_mb"]
    lines += ["", f"Peak RSS: the converter process holds {first['after_import']:.0f} MB once FFCV "
              f"is imported, before any image ({first['before_import']:.0f} MB before: FFCV "
              "brings torch, numba and OpenCV); the decode pool and FFCV's writers are forks of "
              "it, so they start at its size. What the images add is the difference."]
    return lines


# ---------------------------------------------------------------- chart


def chart(result: dict, path: Path) -> None:
    """Per dataset: loader images/s (train and eval) per backend with the torchvision
    DataLoader marked, and end-to-end images/s with the synthetic bound marked. A backend that
    failed is marked "failed" where its bar would be (why: the Markdown's notes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d["name"] for d in result["datasets"]] or ["(none)"]
    fig, axes = plt.subplots(len(datasets), 2, figsize=(11, 3.6 * len(datasets)), dpi=110,
                             squeeze=False)
    for row_axes, dataset in zip(axes, datasets):
        _loader_panel(row_axes[0], [r for r in result["loaders"] if r["dataset"] == dataset],
                      dataset)
        _e2e_panel(row_axes[1], [r for r in result["e2e"] if r["dataset"] == dataset], dataset)
    fig.suptitle(f"respipe on {result['device']} ({result['date'][:10]})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _loader_panel(ax, rows: list[dict], dataset: str) -> None:
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    splits = list(dict.fromkeys(r["split"] for r in rows))
    width = 0.8 / max(len(splits), 1)
    for k, split in enumerate(splits):
        cells = [next((r for r in rows if r["backend"] == b and r["split"] == split), {})
                 for b in backends]
        positions = [i + k * width for i in range(len(backends))]
        ax.bar(positions, [r.get("images_per_s") or 0 for r in cells], width, label=split)
        _mark_failed(ax, positions, cells)
        for split_rows in (r for r in rows if r["split"] == split
                           and r["backend"] == "torchvision" and r.get("images_per_s")):
            ax.axhline(split_rows["images_per_s"], linestyle="--", linewidth=0.8,
                       color=f"C{k}", label=f"torchvision {split}")
    ax.set_xticks([i + width * (len(splits) - 1) / 2 for i in range(len(backends))], backends)
    rates = [r["images_per_s"] for r in rows if r.get("images_per_s")]
    if rates:
        ax.set_yscale("log")
        ax.set_ylim(bottom=min(rates) / 3)  # every bar visibly above the axis
    ax.set_ylabel("images/s (log)")
    ax.set_title(f"{dataset}: loaders alone", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)


def _e2e_panel(ax, rows: list[dict], dataset: str) -> None:
    real = [r for r in rows if r["backend"] != "synthetic"]
    ax.bar([r["backend"] for r in real], [r.get("images_per_s") or 0 for r in real],
           color="C2")
    _mark_failed(ax, range(len(real)), real)
    bound = next((r.get("images_per_s") for r in rows if r["backend"] == "synthetic"), None)
    if bound:
        ax.axhline(bound, linestyle="--", color="k", linewidth=1, label="synthetic bound")
        ax.legend(fontsize=7)
    model = rows[0]["model"] if rows else ""
    ax.set_ylabel("training images/s")
    ax.set_title(f"{dataset}: end to end, {model}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def _mark_failed(ax, positions, rows: list[dict]) -> None:
    """A red "failed" standing where the bar of each failed row would be."""
    for x, row in zip(positions, rows):
        if failed(row):
            ax.text(x, 0.03, "failed", transform=ax.get_xaxis_transform(), rotation=90,
                    ha="center", va="bottom", color="red", fontsize=8, fontweight="bold")
