"""Where the time goes, in one run: every data backend alone (train and eval) beside the
torchvision DataLoader, training end to end through train.loop.train_one_epoch against the
synthetic upper bound, the trainer against a bare eager loop, channels_last against contiguous,
the ImageNet converter against a one-process PIL reference, and the paper's 64k-iteration
ResNet-32 run projected per step mode.

  make bench                                      # everything, from nothing but `make install`
  .venv/bin/python tools/bench.py [--cifar DIR] [--imagenet DIR] [--smoke] [...]

Without --imagenet it builds an ImageNet-format set from real photos (tools/converter/photos.py)
under --work and converts it (that conversion is the converter benchmark). CIFAR-10 is used when
converted (--cifar, default data/records/cifar10 if there). Writes
bench/results/<machine>-<date>.{json,md,png} with the device, versions, load average before and
after, and this exact command (--smoke: <machine>-<date>-smoke.*, never the day's results). On a
busy machine the numbers are low and noisy: the ratios from interleaved rounds (trainer ÷ bare
loop, layouts) hold up best. Inputs that are not there are refused before anything runs; a part
that fails is written down with why, the others still run, and the exit status is then 1.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402

from tools.benchmark import measure, parts, plan, report  # noqa: E402
from tools.benchmark.plan import BACKENDS, DEFAULT_CIFAR, PARTS, ROOT  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    add = parser.add_argument
    add("--cifar", help="CIFAR-10/100 records (tools/convert.py output); default "
        f"{DEFAULT_CIFAR.relative_to(ROOT)} when converted")
    add("--imagenet", help="ImageNet records; default: build the photo set under --work")
    add("--work", default=str(ROOT / "build" / "bench"), help="photo set and its records")
    add("--backends", default=",".join(BACKENDS))
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add("--workers", type=int, default=None, help="data.num_workers (default: all cores)")
    add("--smoke", action="store_true", help="tiny sizes: checks that every part runs (CI)")
    add("--only", default=",".join(PARTS), help="comma list of parts to run")
    add("--photos", type=int, help="train images of the generated set")
    add("--convert-photos", help="comma list: train images of larger photo sets the "
        "converter is also timed on (their records are then deleted); default: the profile's "
        "(20000 on CPU and GPU), none: only the base set")
    add("--sources", help="folder of photos for the set (default: scikit-image's)")
    add("--steps", type=int, help="timed e2e steps")
    add("--amp", default="bf16", help="run.amp of the e2e runs (CUDA only)")
    add("--compile", default="false", help="run.compile of the e2e runs")
    add("--no-channels-last", action="store_true", help="data.channels_last=false")
    add("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    add("--out", default=str(ROOT / "bench" / "results"))
    add("--name", help="results file stem (default <machine>-<date>, --smoke: ...-smoke)")
    add("--note", action="append", default=[], help="free text saved with the results")
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(args.backends) - set(BACKENDS))
    if unknown:
        parser.error(f"--backends: unknown {unknown}; choose from {', '.join(BACKENDS)}")
    args.only = {p.strip() for p in args.only.split(",") if p.strip()}
    if args.only - set(PARTS):
        parser.error(f"--only: unknown {sorted(args.only - set(PARTS))}; choose from "
                     f"{sorted(PARTS)}")
    args.compile = {"false": False, "true": "default"}.get(args.compile.lower(), args.compile)
    if args.convert_photos is not None:
        counts = args.convert_photos.split(",") if args.convert_photos != "none" else []
        if not all(n.strip().isdigit() and int(n) > 0 for n in counts):
            parser.error(f"--convert-photos: {args.convert_photos!r} is not a comma list of "
                         "positive counts (or none)")
        args.convert_photos = tuple(int(n) for n in counts)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    plan.check_inputs(args)
    device = torch.device(args.device)
    sizes = plan.PROFILES["smoke" if args.smoke else device.type]
    if args.steps:
        sizes = replace(sizes, steps=args.steps, imagenet_steps=args.steps)
    if args.photos:
        sizes = replace(sizes, photos=args.photos)
    if args.convert_photos is not None:
        sizes = replace(sizes, convert_photos=args.convert_photos)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = measure.RunSettings(device=str(device), amp=args.amp, compile=args.compile,
                                   channels_last=not args.no_channels_last,
                                   workers=args.workers or report.cores())
    load_before = report.load_average()
    if report.is_busy(load_before):
        print(f"warning: load average {load_before} on {report.cores()} cores: the machine is "
              "busy, the numbers will be low and noisy", file=sys.stderr)
    notes = list(args.note)
    datasets, conversion = plan.datasets(args, sizes, settings.workers, notes)

    only = args.only
    rows = {"loaders": parts.loaders(datasets, args.backends, sizes, device, settings,
                                     "loaders" in only),
            "e2e": parts.end_to_end(datasets, args.backends, sizes, settings)
            if "e2e" in only else []}
    parts.add_ratios(rows["loaders"], rows["e2e"])
    rows["trainer_vs_bare"] = (parts.trainer_vs_bare(datasets, sizes, settings)
                               if "trainer" in only else [])
    rows["layouts"] = parts.layouts(datasets, sizes, device) if "layouts" in only else []
    rows["paper"] = parts.paper(sizes, device) if "paper" in only else []

    result = report.record(args, argv, device, load_before, settings, sizes, datasets, rows,
                           conversion, notes)
    paths = report.write(result, Path(args.out), args.name or report.default_name(result))
    print(report.markdown(result))
    print("wrote " + ", ".join(str(p) for p in paths))
    failed = parts.failures(result)
    if failed:
        print(f"error: {len(failed)} of the parts asked for failed (first: {failed[0]}); "
              f"every reason: {paths[1]}", file=sys.stderr)
    return result


if __name__ == "__main__":
    try:
        sys.exit(1 if parts.failures(main()) else 0)
    except plan.BenchError as error:
        sys.exit(f"error: {error}")
