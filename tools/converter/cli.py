"""The converter's command line: one subcommand per dataset of records/datasets.py, and verify.

  python tools/convert.py DATASET [--src PATH] --out DIR [--formats F,...] [--workers N]
                          [--strict] [--allow-subset] [DATASET's options]
  python tools/convert.py verify DIR/<dataset>

Writes DIR/<dataset>/<format>/... (a folder dataset: DIR/<--name>/) and, last, manifest.json
(the layout is records/format.py's). Every output appears under its final name only when
complete; a rerun after a crash skips the outputs already finished. A rerun writes exactly the
--formats asked for: records of a format left out are deleted (with a warning). Ctrl-C or
SIGTERM stops the converter and its workers within seconds (exit status 130 / 143); rerunning
the same command finishes the job. `make dataset-DATASET` runs it with --out $(DATA), --src
(and a folder dataset's --name) from the make variable the dataset names (CIFAR10_SRC=...).
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import re
import signal
import sys
import time
import warnings
from pathlib import Path

from records import datasets
from records import format as fmt
from records.check import verify
from tools.converter.writers.ffcv import beton_payload

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def converter(entry: datasets.Dataset):
    """tools/converter/datasets/<entry.converter>.py: NEEDS_SRC, add_arguments, convert."""
    return importlib.import_module(f"tools.converter.datasets.{entry.converter}")


def records_name(entry: datasets.Dataset, name: str | None) -> str:
    """The folder the records go to: the dataset's name, or a folder dataset's --name."""
    if not entry.named:
        return entry.name
    if not name or not NAME.fullmatch(name):
        raise ValueError(f"{entry.name} needs --name NAME (letters, digits, '_', '.', '-'; the "
                         f"records go to OUT/NAME), got {name!r}; make: "
                         f"{entry.make_target()}")
    return name


def convert(dataset: str, src=None, out="data/records", formats=None, workers=None,
            strict=False, *, allow_subset=False, quiet=False, name=None, **options) -> Path:
    """Convert `dataset` from `src` into out/<dataset> (a folder dataset: out/<name>); returns
    that folder. formats: None for every format of the dataset (records/datasets.py);
    options: the dataset's converter's own (tools/converter/datasets/<converter>.py)."""
    entry = datasets.get(dataset)
    formats = fmt.parse_formats(dataset, entry.formats if formats is None else formats)
    module = converter(entry)
    if src is None and module.NEEDS_SRC:
        raise ValueError(f"{dataset} needs --src: {entry.source}; pass --src PATH or set "
                         f"{entry.src_var}=PATH ({entry.make_target()})")
    if entry.named:
        options["name"] = records_name(entry, name)
    root = Path(out) / records_name(entry, name)
    t0 = time.perf_counter()
    manifest, report = module.convert(entry, None if src is None else Path(src), root,
                                      formats=formats, workers=workers or default_workers(),
                                      strict=strict, allow_subset=allow_subset, **options)
    if not quiet:
        print(summary(root, manifest, report, time.perf_counter() - t0))
    return root


def summary(root: Path, manifest: dict, report: dict, seconds: float) -> str:
    total = sum(s["count"] for s in manifest["splits"].values())
    counts = ", ".join(f"{k} {v['count']}" for k, v in manifest["splits"].items())
    lines = [f"{manifest['dataset']}: {total} images ({counts}), "
             f"{len(manifest['skipped'])} skipped, {seconds:.1f} s -> {root}"]
    for name, r in report.items():
        rels = [rel for rel in manifest["files"] if rel.startswith(f"{name}/")]
        if not r["images"] and not rels:
            continue
        rate = f"{r['images'] / r['seconds']:.0f} img/s" if r["images"] else "reused"
        size = sum((root / rel).stat().st_size for rel in rels)
        line = f"  {name}: {r['images']} images in {r['seconds']:.1f} s, {rate}"
        if rels:
            line += f", {size / total / 1024:.1f} KiB/image on disk"
        if name == "ffcv" and rels:
            payload = sum(beton_payload(root / rel) for rel in rels)
            line += f" ({payload / total / 1024:.1f} KiB/image of sample data)"
        lines.append(line)
    return "\n".join(lines)


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised in the main thread so that every writer cleans up."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum, _frame):
    raise Interrupted(signum)


def _exit_interrupted(stop: Interrupted) -> None:
    print(f"convert: stopped by {stop}; finished outputs are kept, rerun the same command to "
          "finish", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit: interpreter shutdown would wait on FFCV's queue feeder threads.
    os._exit(128 + stop.signum)


def _error_text(err: BaseException, out: Path) -> str:
    from tools.converter.writers.atomic import DiskFull, disk_full

    if isinstance(err, OSError) and err.errno == errno.ENOSPC and not isinstance(err, DiskFull):
        err = disk_full(Path(err.filename) if err.filename else out)
    if isinstance(err, OSError) and err.strerror and not err.filename:
        return err.strerror
    return str(err)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        description="Convert a dataset into the record formats respipe's loaders read.",
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True,
                             title="one subcommand per dataset (DATASET --help: its options)")
    for entry in datasets.DATASETS.values():
        module = converter(entry)
        formats = ",".join(entry.formats)
        p = sub.add_parser(entry.name, help=f"{entry.title}: {entry.source}",
                           description=f"{entry.title} -> OUT/"
                           f"{'NAME' if entry.named else entry.name}/.",
                           epilog=getattr(module, "HELP", None),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        src = os.environ.get(entry.src_var) or None
        p.add_argument("--src", type=Path, default=src,
                       help=("required: " if module.NEEDS_SRC else "") +
                       f"{entry.source}; default: ${entry.src_var}"
                       + ("" if module.NEEDS_SRC else ", else the official one, downloaded "
                          "(md5-checked)"))
        p.add_argument("--out", type=Path, required=True,
                       help=f"writes OUT/{'NAME' if entry.named else entry.name}/")
        p.add_argument("--formats", default=formats,
                       help=f"comma list of {formats} (default: all); a rerun with fewer "
                       "formats DELETES the records of the others")
        p.add_argument("--workers", type=int, default=None,
                       help=f"processes (default: all cores, here {default_workers()})")
        p.add_argument("--strict", action="store_true",
                       help="an undecodable image is an error instead of a skip")
        p.add_argument("--allow-subset", action="store_true",
                       help="accept fewer images/classes than the official dataset")
        module.add_arguments(p, entry)
    p = sub.add_parser("verify", help="re-check a converted folder's sha256s and counts")
    p.add_argument("root", type=Path, help="DIR/<dataset>")
    return top


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    warnings.formatwarning = lambda message, *_args, **_kw: f"warning: {message}\n"
    if args.command == "verify":
        try:
            problems = verify(args.root)
        except (OSError, ValueError, KeyError) as err:
            problems = [str(err)]
        for problem in problems:
            print(f"verify: {problem}", file=sys.stderr)
        if not problems:
            print(f"{args.root}: all files and counts match the manifest")
        return 1 if problems else 0
    options = {key: value for key, value in vars(args).items()
               if key not in ("command", "src", "out", "formats", "workers", "strict",
                              "allow_subset")}
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    try:
        convert(args.command, args.src, args.out, args.formats, args.workers, args.strict,
                allow_subset=args.allow_subset, **options)
    except Interrupted as stop:
        _exit_interrupted(stop)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"convert: error: {_error_text(err, args.out / args.command)}", file=sys.stderr)
        return 1
    return 0
