"""Convert CIFAR-10/100 and ImageNet-2012 into the record formats respipe's pipelines read.

  python tools/convert.py {cifar10,cifar100,imagenet} --src PATH --out DIR [--formats F,...]
                          [--workers N] [--strict] [--allow-subset] [...]
  python tools/convert.py verify DIR/<dataset>

Writes DIR/<dataset>/<format>/... and, last, DIR/<dataset>/manifest.json (the layout is
records/format.py's). Formats: CIFAR "arrays" (.npy) and "ffcv"; ImageNet "webdataset"
(tar shards) and "ffcv". Every output appears under its final name only when complete; a rerun
after a crash skips the outputs already finished. A rerun writes exactly the --formats asked
for: records of a format left out are deleted (with a warning).
Ctrl-C or SIGTERM stops the converter and its workers within seconds (exit status 130 / 143);
rerunning the same command finishes the job.
"""
from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repo root, not from tools/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from records import datasets  # noqa: E402
from records import format as fmt  # noqa: E402
from records.check import verify  # noqa: E402
from tools.writers.ffcv import beton_payload  # noqa: E402

# ImageNet defaults: shorter side capped at the largest train scale (480) and the largest
# multi-scale test side (640). Most ImageNet photos (~500x375) are below both caps and their
# original JPEG goes to the shards unchanged. FFCV re-encodes every image at this quality.
JPEG_QUALITY = 90
TRAIN_MAX_SIDE = datasets.PHOTO_MAX_SIDE["train"]
VAL_MAX_SIDE = datasets.PHOTO_MAX_SIDE["val"]

IMAGENET_HELP = f"""\
ImageNet: --src is a folder holding either train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (val/ may
be flat ILSVRC2012_val_*.JPEG with the devkit), or the official ILSVRC2012_img_train.tar,
ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz (read in place, never unpacked).
Images are decoded, converted to RGB (CMYK, grayscale, PNG-named-.JPEG all handled), their
shorter side capped at {TRAIN_MAX_SIDE} (train) / {VAL_MAX_SIDE} (val) px (--train-max-side,
--val-max-side), then
  ffcv: RGBImageField(write_mode="jpg", jpeg_quality={JPEG_QUALITY}) (--jpeg-quality),
        max_resolution unset (it would cap the LONGER side; images are pre-resized instead).
        Disk: about the size of the source JPEGs, ImageNet's average being ~110 KB, so
        ~100-140 GB for train and ~5 GB for val (52 KB/image measured on 500 px photos);
  webdataset: shards webdataset/<split>/shard-NNNNNN.tar (+ .idx for fn.readers.webdataset)
        of <key>.jpg + <key>.cls, --shard-size images each (default: min(1000, N/8), ~110 MB);
        an RGB JPEG that needs no resize is stored byte for byte, others are re-encoded
        at --jpeg-quality. Train is shuffled once (seed 0) before sharding; val keeps name order.
Undecodable or truncated images are listed in manifest "skipped" with a warning (--strict:
error). Class index = position in sorted WNIDs; without --allow-subset there must be 1000.
"""


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def convert(dataset: str, src=None, out="data/records", formats=None, workers=None,
            strict=False, *, allow_subset=False, jpeg_quality=JPEG_QUALITY,
            train_max_side=TRAIN_MAX_SIDE, val_max_side=VAL_MAX_SIDE, shard_size=None,
            quiet=False) -> Path:
    """Convert `dataset` from `src` into out/<dataset>; returns that folder. formats: None for
    every format of the dataset (records/datasets.py)."""
    formats = fmt.parse_formats(dataset, datasets.get(dataset).formats if formats is None
                                else formats)
    workers = workers or default_workers()
    root = Path(out) / dataset
    t0 = time.perf_counter()
    if dataset == "imagenet":
        from tools.writers.imagenet import convert_imagenet

        if src is None:
            raise ValueError("imagenet needs --src (a folder with the archives or train/ val/)")
        manifest, report = convert_imagenet(
            Path(src), root, formats=formats, workers=workers, strict=strict,
            allow_subset=allow_subset, jpeg_quality=jpeg_quality, train_max_side=train_max_side,
            val_max_side=val_max_side, shard_size=shard_size)
    else:
        from tools.datasets.cifar import download
        from tools.writers.cifar import convert_cifar

        if src is None:
            src, info = download(dataset, Path(out) / "downloads"), {"downloaded": True}
        else:
            info = {}
        src = Path(src)
        if not src.is_file():
            raise FileNotFoundError(f"{src}: no such file (expected the {dataset} python tarball)")
        manifest, report = convert_cifar(dataset, src, root, formats=formats, workers=workers,
                                         allow_subset=allow_subset,
                                         source_info={"path": str(src), **info})
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
    from tools.writers.atomic import DiskFull, disk_full

    if isinstance(err, OSError) and err.errno == errno.ENOSPC and not isinstance(err, DiskFull):
        err = disk_full(Path(err.filename) if err.filename else out)
    if isinstance(err, OSError) and err.strerror and not err.filename:
        return err.strerror
    return str(err)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=IMAGENET_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("cifar10", "cifar100", "imagenet"):
        p = sub.add_parser(name, help=f"convert {name}",
                           epilog=IMAGENET_HELP if name == "imagenet" else None,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--src", type=Path, required=name == "imagenet",
                       help="imagenet: folder with archives or train/ val/; cifar: the python "
                       "tarball (omit to download the official one, md5-checked)")
        p.add_argument("--out", type=Path, required=True, help="writes OUT/<dataset>/")
        formats = ",".join(datasets.get(name).formats)
        p.add_argument("--formats", default=formats,
                       help=f"comma list of {formats} (default: all); a "
                       "rerun with fewer formats DELETES the records of the others")
        p.add_argument("--workers", type=int, default=None,
                       help=f"processes (default: all cores, here {default_workers()})")
        p.add_argument("--strict", action="store_true",
                       help="an undecodable image is an error instead of a skip")
        p.add_argument("--allow-subset", action="store_true",
                       help="accept fewer images/classes than the official dataset")
        if name == "imagenet":
            p.add_argument("--jpeg-quality", type=int, default=JPEG_QUALITY)
            p.add_argument("--train-max-side", type=int, default=TRAIN_MAX_SIDE,
                           help="cap on the shorter side of train images (px)")
            p.add_argument("--val-max-side", type=int, default=VAL_MAX_SIDE,
                           help="cap on the shorter side of val images (px)")
            p.add_argument("--shard-size", type=int, default=None,
                           help="images per webdataset shard (default min(1000, N/8))")
    p = sub.add_parser("verify", help="re-check a converted folder's sha256s and counts")
    p.add_argument("root", type=Path, help="DIR/<dataset>")
    args = parser.parse_args(argv)
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
    extra = {}
    if args.command == "imagenet":
        extra = dict(jpeg_quality=args.jpeg_quality, train_max_side=args.train_max_side,
                     val_max_side=args.val_max_side, shard_size=args.shard_size)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    try:
        convert(args.command, args.src, args.out, args.formats, args.workers, args.strict,
                allow_subset=args.allow_subset, **extra)
    except Interrupted as stop:
        _exit_interrupted(stop)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"convert: error: {_error_text(err, args.out / args.command)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
