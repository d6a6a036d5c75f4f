"""A run directory read back for the figure and table tools: its config, metrics.jsonl, and
summary.json when it finished (train/run.py writes summary.json last)."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from train.config import Config, load_config
from train.metrics import METRICS, read_metrics

FINISHED = ("completed", "early_stopped")
UNITS = {"iter": "iterations", "epoch": "epochs"}


@dataclass
class Run:
    path: Path
    cfg: Config
    records: list[dict]
    summary: dict | None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def finished(self) -> bool:
        return self.summary is not None and self.summary.get("status") in FINISHED

    @property
    def synthetic(self) -> bool:
        """Trained on the synthetic backend: random images, not its config's dataset."""
        return self.cfg.data.backend == "synthetic"

    @property
    def label(self) -> str:
        """The run's name, and what it really was where its config's dataset would mislead."""
        notes = ["synthetic data"] if self.synthetic else []
        if not self.finished:
            notes.append(f"unfinished, iteration {self.iteration}")
        return f"{self.name} ({', '.join(notes)})" if notes else self.name

    @property
    def iteration(self) -> int:
        """The last iteration logged."""
        return max((r["iter"] for r in self.records), default=0)

    def progress(self) -> str:
        """Where an unfinished run stands, e.g. "iteration 700 of 2000 iterations"."""
        sched = self.cfg.schedule
        status = self.summary.get("status") if self.summary else "no summary.json"
        return (f"unfinished ({status}): iteration {self.iteration} of {sched.total} "
                f"{UNITS[sched.unit]}")

    def eval_result(self, mode: str, split: str) -> dict | None:
        """RUN_DIR/eval_<mode>_<split>.json written by train/evaluate.py, if any."""
        path = self.path / f"eval_{mode}_{split}.json"
        return json.loads(path.read_text()) if path.is_file() else None


class NotARun(FileNotFoundError):
    """A folder that holds no run (no config.yaml)."""


def read_run(path: str | Path) -> Run:
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise NotARun(f"{path}: not a run directory (no config.yaml)")
    records = read_metrics(path) if (path / METRICS).is_file() else []
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    return Run(path, load_config(path / "config.yaml"), records, summary)


def read_runs(paths) -> list[Run]:
    """The runs among `paths` (e.g. a shell's runs/*/); each folder that is not a run is
    skipped with a one-line note. None at all is an error."""
    runs, skipped = [], []
    for path in paths:
        try:
            runs.append(read_run(path))
        except NotARun as why:
            skipped.append(str(why))
    if not runs:
        raise NotARun(f"no run directory among {', '.join(map(str, paths))} (no config.yaml)")
    for why in skipped:
        print(f"note: skipped {why}", file=sys.stderr)
    return runs
