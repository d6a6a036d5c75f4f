"""The seeds' and the paper's tables regenerated from runs:

  .venv/bin/python tools/table.py RUN_DIR... [--format md|csv] [--out FILE]

One row per (run, published number of its net): the measured number, the published one
(tools/published.py), and measured - published, in the metric the source printed (top-1
error or accuracy, %). CIFAR runs are measured on the test set (the final model, summary.json);
ImageNet runs on val: center crop from summary.json, 10-crop and multi-scale from the
eval_<mode>_val.json files of train/evaluate.py. A run whose net has no published number gets
one row with the published column empty. Unfinished runs (no summary.json, interrupted, or
stopped on a non-finite loss) are listed apart, with how far they got, and measure nothing. A
run on the synthetic backend measured random images, not its dataset: it is never compared
with a published number. Folders that hold no run are skipped with a note.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import shortcut_of  # noqa: E402
from pipelines import report_split  # noqa: E402
from tools.published import Published, lookup  # noqa: E402
from tools.runs import UNITS, Run, read_runs  # noqa: E402
from train.run import shell_command  # noqa: E402

COLUMNS = ("table", "row", "run", "metric", "measured", "published", "difference", "note")
SHORT = 0.95  # a completed run below this fraction of the published schedule is "shortened"


@dataclass
class Row:
    table: str
    row: str
    run: str
    metric: str
    measured: float | None
    published: float | None
    note: str

    @property
    def difference(self) -> float | None:
        if self.measured is None or self.published is None:
            return None
        return self.measured - self.published


def measured_error(run: Run, protocol: str) -> tuple[float | None, str]:
    """(top-1 error %, note) of a finished run under `protocol`."""
    split = report_split(run.cfg.data)
    if protocol in ("test", "center"):
        return run.summary[f"{split}_top1_error"], ""
    result = run.eval_result(protocol, split)
    if result is None:
        return None, ("not evaluated: "
                      f"{shell_command('train/evaluate.py', run.path, '--mode', protocol)}")
    return result["top1_error"], ""


def shortened(run: Run, pub: Published) -> str:
    unit, total = pub.full_schedule
    done = run.summary["iterations" if unit == "iter" else "epochs"]
    if done < SHORT * total:
        return f"shortened: {done:g} of the recipe's {total} {UNITS[unit]}"
    return ""


def rows_for(run: Run) -> list[Row]:
    model = run.cfg.model.name
    shortcut = shortcut_of(model, run.cfg.model.shortcut)
    matches = [] if run.synthetic else lookup(model, shortcut, run.cfg.data.dataset)
    if run.synthetic:
        table, row = "synthetic data (no dataset)", f"{model} {shortcut}"
        note = (f"data.backend=synthetic: random images, not {run.cfg.data.dataset}; not "
                "comparable with a published number")
    elif matches:
        table, row, note = matches[0].table, matches[0].row, ""
    else:
        table, row, note = "no published number", f"{model} {shortcut} {run.cfg.data.dataset}", ""
    if not run.finished:
        return [Row(table, row, run.name, "top-1 error %", None, None, run.progress())]
    if not matches:
        error, _ = measured_error(run, "test")
        return [Row(table, row, run.name, "top-1 error %", error, None, note)]
    rows = []
    for pub in matches:
        error, note = measured_error(run, pub.protocol)
        value = error if error is None or pub.metric == "error" else 100.0 - error
        notes = [n for n in (note, shortened(run, pub)) if n]
        if pub.value is None:
            notes.append(pub.source)
        rows.append(Row(pub.table, pub.row, run.name, f"top-1 {pub.metric} %", value,
                        pub.value, "; ".join(notes)))
    return rows


def build_rows(run_dirs: list[str | Path]) -> tuple[list[Row], list[Row]]:
    """(rows of finished runs, rows of unfinished ones)."""
    runs = read_runs(run_dirs)
    done = [row for run in runs if run.finished for row in rows_for(run)]
    pending = [row for run in runs if not run.finished for row in rows_for(run)]
    return done, pending


def cells(row: Row) -> list[str]:
    def number(value: float | None, sign: bool = False) -> str:
        return "" if value is None else f"{value:+.2f}" if sign else f"{value:.2f}"

    return [row.table, row.row, row.run, row.metric, number(row.measured),
            number(row.published), number(row.difference, sign=True), row.note]


def render(done: list[Row], pending: list[Row], fmt: str = "md") -> str:
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(cells(row) for row in done + pending)
        return buffer.getvalue()
    lines = []
    for title, rows in (("Finished runs", done), ("Unfinished runs (not measured)", pending)):
        if not rows:
            continue
        lines += [f"### {title}", "", "| " + " | ".join(COLUMNS) + " |",
                  "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in cells(row)) + " |"
                  for row in rows]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--format", choices=("md", "csv"), default="md")
    parser.add_argument("--out", type=Path, help="write here as well as to stdout")
    args = parser.parse_args(argv)
    text = render(*build_rows(args.run_dirs), args.format)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text, end="")
    return text


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
