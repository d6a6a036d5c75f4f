"""What a run leaves on disk besides checkpoints: metrics.jsonl, TensorBoard events, curves.png
and summary.json (rank 0 only)."""
from __future__ import annotations

import json
import math
from pathlib import Path

from train.files import atomic_write

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
        self.file = open(self.path, "a")

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
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "epoch":
                self.writer.add_scalar(f"{kind}/{name}", value, iteration)
        return record

    def close(self) -> None:
        self.file.close()
        self.writer.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(records: list[dict], path: str | Path, title: str = "") -> None:
    """Train error (thin) and val error (bold) in % against iterations: the paper's Figure 6."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["iter"], r["error"]) for r in records if r["kind"] == "train"]
    val = [(r["iter"], r["top1_error"]) for r in records if r["kind"] == "val"]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    if train:
        ax.plot(*zip(*train), linewidth=0.8, label="train error")
    if val:
        ax.plot(*zip(*val), linewidth=2.2, marker="o" if len(val) < 30 else None,
                markersize=3, label="val error")
    ax.set_xlabel("iterations")
    ax.set_ylabel("error (%)")
    errors = [e for _, e in train + val if math.isfinite(e)]
    ax.set_ylim(0, min(100.0, max(errors, default=100.0) * 1.05) or 1.0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


def write_text(text: str, path: str | Path) -> None:
    """Write via a temporary file and os.replace: readers never see half a file."""
    atomic_write(path, text.encode())


def write_json(obj: dict, path: str | Path) -> None:
    write_text(json.dumps(obj, indent=2) + "\n", path)
