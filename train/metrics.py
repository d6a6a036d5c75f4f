"""What a run leaves on disk besides checkpoints: metrics.jsonl, TensorBoard events, curves.png
and summary.json (rank 0 only)."""
from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

from train.files import atomic_write, no_space

METRICS = "metrics.jsonl"


class MetricsLog:
    """One JSON object per line in metrics.jsonl, mirrored as TensorBoard scalars
    (`<kind>/<name>` against the iteration)."""

    def __init__(self, run_dir: Path, resume_iter: int | None = None):
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only on rank 0

        self.path = Path(run_dir) / METRICS
        if resume_iter is not None:
            self._truncate(resume_iter)
        # purge_step drops events a killed run wrote after its last checkpoint
        purge = None if resume_iter is None else resume_iter + 1
        self.writer = SummaryWriter(str(run_dir), purge_step=purge)
        self.file = open(self.path, "ab", buffering=0)  # each record one unbuffered append

    def _truncate(self, iteration: int) -> None:
        """Forget records written after the checkpoint being resumed from."""
        if not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("iter", 0) <= iteration
                and json.loads(line).get("kind") != "test"]
        write_text("".join(line + "\n" for line in kept), self.path)

    def log(self, kind: str, iteration: int, **values) -> dict:
        record = {"kind": kind, "iter": iteration, **values}
        self.append((json.dumps(record) + "\n").encode())
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "epoch":
                self.writer.add_scalar(f"{kind}/{name}", value, iteration)
        return record

    def append(self, line: bytes) -> None:
        """Append one whole line, or nothing: a failed write (a full disk) is cut back off, so
        the file never ends in half a record; a full disk raises files.no_space's RunError."""
        end = self.file.tell()
        try:
            done = 0
            while done < len(line):
                done += self.file.write(line[done:])
        except OSError as error:
            os.ftruncate(self.file.fileno(), end)
            full = no_space(error, self.path, len(line))
            if full is not None:
                raise full from error
            raise

    def close(self) -> None:
        self.file.close()
        self.writer.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(records: list[dict], path: str | Path, title: str = "") -> None:
    """One run's curves.png (see plot_runs)."""
    plot_runs([("", records)], path, title=title)


def train_points(records: list[dict]) -> list[tuple[int, float]]:
    """(iteration, train error %) of every log step. A step closer to the previous one than the
    usual interval (the log at an epoch's end) is merged into the next, weighted by iterations:
    alone, the error of one or two batches would be a spike in the curve."""
    train = [r for r in records if r["kind"] == "train" and "error" in r]
    gaps = [max(b["iter"] - a, 1) for a, b in zip([0] + [r["iter"] for r in train], train)]
    usual = statistics.median(gaps) if gaps else 0
    points, weight, total = [], 0, 0.0
    for i, (record, gap) in enumerate(zip(train, gaps)):
        weight, total = weight + gap, total + record["error"] * gap
        if weight >= usual or i == len(train) - 1:
            points.append((record["iter"], total / weight))
            weight, total = 0, 0.0
    return points


def curve_points(records: list[dict], x: str = "iter") -> dict[str, list[tuple[float, float]]]:
    """A run's error curves in %: train (every log step, train_points), val (every evaluation)
    and test (final model, once at the end), against iterations or, x="epoch", fractional
    epochs."""
    per_epoch = [r["iter"] / r["epoch"] for r in records if r["kind"] == "epoch" and r["epoch"]]
    if x == "epoch" and not per_epoch:
        raise ValueError("x='epoch' needs a run with one finished epoch at least")
    scale = 1.0 / per_epoch[0] if x == "epoch" else 1.0
    pick = {"val": lambda r: r["kind"] == "val",
            "test": lambda r: r["kind"] == "test" and r.get("which") == "final"}
    points = {"train": train_points(records)}
    points.update({curve: [(r["iter"], r["top1_error"]) for r in records if keep(r)]
                   for curve, keep in pick.items()})
    return {curve: [(i * scale, e) for i, e in values] for curve, values in points.items()}


def figure_runs(runs: list[tuple[str, list[dict]]], x: str = "iter", title: str = ""):
    """The paper's Figure 6 look for several runs (name, metrics records): train error thin and
    dashed, val error bold, the final test error a star; one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    errors, handles = [], []
    for i, (name, records) in enumerate(runs):
        colour = f"C{i % 10}"
        points = curve_points(records, x)
        if points["train"]:
            ax.plot(*zip(*points["train"]), color=colour, linewidth=0.9, linestyle="--")
        if points["val"]:
            ax.plot(*zip(*points["val"]), color=colour, linewidth=2.2,
                    marker="o" if len(points["val"]) < 30 else None, markersize=3)
        if points["test"]:
            ax.plot(*zip(*points["test"]), color=colour, marker="*", markersize=11,
                    linestyle="none")
        if name:  # a legend entry even for a run that has no val point yet
            handles.append(Line2D([], [], color=colour, linewidth=2.2, label=name))
        errors += [e for curve in points.values() for _, e in curve if math.isfinite(e)]
    handles += [Line2D([], [], color="k", linewidth=0.9, linestyle="--", label="train error"),
                Line2D([], [], color="k", linewidth=2.2, label="val error"),
                Line2D([], [], color="k", marker="*", markersize=11, linestyle="none",
                       label="test error (final)")]
    ax.legend(handles=handles, fontsize=8)
    ax.set_xlabel("epochs" if x == "epoch" else "iterations")
    ax.set_ylabel("error (%)")
    ax.set_ylim(0, min(100.0, max(errors, default=100.0) * 1.05) or 1.0)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_runs(runs: list[tuple[str, list[dict]]], path: str | Path, x: str = "iter",
              title: str = "") -> None:
    """figure_runs written to the PNG `path` atomically."""
    import matplotlib.pyplot as plt

    fig = figure_runs(runs, x, title)
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


def write_text(text: str, path: str | Path) -> None:
    """Write via a temporary file and os.replace: readers never see half a file."""
    atomic_write(path, text.encode())


def write_json(obj: dict, path: str | Path) -> None:
    write_text(json.dumps(obj, indent=2) + "\n", path)
