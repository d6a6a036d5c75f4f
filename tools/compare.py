"""Several runs' error curves on one chart, the paper's Figure 6 look:

  .venv/bin/python tools/compare.py RUN_DIR... --out fig.png [--x iter|epoch]
      [--title TEXT]

Train error thin and dashed (every log step), val error bold (every evaluation: the trainer
picks its best model on val and meets the test set only at the end), the final model's test
error a star; one colour per run, named by its directory (and what it really was: synthetic
data, unfinished at iteration N). --x epoch plots against epochs (the default for runs whose
schedule counts epochs). Unfinished runs are drawn as far as they got; folders that hold no run
are skipped with a note.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.runs import read_runs  # noqa: E402
from train.metrics import plot_runs  # noqa: E402


def compare(run_dirs: list[str | Path], out: str | Path, x: str | None = None,
            title: str = "") -> Path:
    runs = read_runs(run_dirs)
    if x is None:
        x = "epoch" if all(r.cfg.schedule.unit == "epoch" for r in runs) else "iter"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_runs([(r.label, r.records) for r in runs], out, x=x, title=title)
    print(f"{out}: {', '.join(r.label for r in runs)}")
    return out


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--x", choices=("iter", "epoch"),
                        help="x axis (default: epoch if every run's schedule counts epochs)")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    return compare(args.run_dirs, args.out, args.x, args.title)


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
