"""The paper's test protocols on a trained run:
`python train/evaluate.py RUN_DIR --mode {center,tencrop,multiscale} [--split SPLIT]`.

center: one view per image. tencrop: softmax averaged over 4 corners + center and their flips of
the shorter-side-256 image. multiscale: the fully-convolutional net on the whole image resized to
each shorter side in data.aug.eval_scales, softmax averaged over the scales. Loads RUN_DIR/best.pt
and RUN_DIR/config.yaml (key=value overrides apply, e.g. data.root=... on another machine);
writes RUN_DIR/eval_<mode>_<split>.json, with each class's top-1 accuracy by name (printed, worst
first). The split defaults to the one a run reports: CIFAR's test set, ImageNet's and a folder
dataset's val (they have no labelled test set).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # `python train/evaluate.py`: import the repo's packages
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json

import torch

from pipelines import build_loader, class_names, report_split
from pipelines.spec import EVAL_MODES
from records.format import RecordsError
from train.build import load_run, precision
from train.config import ConfigError
from train.files import RunError
from train.loop import accumulate, metrics_from_sums, predict
from train.metrics import write_json


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--mode", choices=EVAL_MODES, default="center")
    parser.add_argument("--split", help="default: the split the run reports (CIFAR test, "
                        "ImageNet val)")
    parser.add_argument("--checkpoint", default="best.pt", help="file in RUN_DIR (best.pt)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser.parse_args(argv)


@torch.inference_mode()
def probabilities(model, loader, prec) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax scores (N, C) on the CPU, in the loader's (unshuffled) order, and labels (N,)."""
    probs, labels = [], []
    for images, target in loader:
        probs.append(predict(model, images, prec).cpu())
        labels.append(target.cpu())
    return torch.cat(probs), torch.cat(labels)


def metrics(probs: torch.Tensor, labels: torch.Tensor, names: list[str] | None = None) -> dict:
    """The metrics of scores; with class names, each class's accuracy by name."""
    sums = accumulate(probs, labels, None, len(names or ()))
    return metrics_from_sums(sums.tolist(), names)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not (args.run_dir / args.checkpoint).is_file() and (args.run_dir / "last.pt").is_file():
        raise FileNotFoundError(
            f"{args.run_dir / args.checkpoint}: no such checkpoint (a run writes best.pt at its "
            f"first evaluation); evaluate its latest weights with --checkpoint last.pt")
    cfg, model = load_run(args.run_dir, args.checkpoint, args.overrides)
    device = next(model.parameters()).device
    prec = precision(cfg, device)
    args.split = args.split or report_split(cfg.data)

    scales = list(cfg.data.aug.eval_scales) if args.mode == "multiscale" else [None]
    total, labels, per_scale = None, None, {}
    for scale in scales:
        loader = build_loader(cfg.data, args.split, device, eval_mode=args.mode, scale=scale)
        probs, target = probabilities(model, loader, prec)
        if labels is not None and not torch.equal(labels, target):
            raise RuntimeError(f"scale {scale}: the loader's order of labels differs from the "
                               "first scale's; cannot average scores per image")
        total, labels = (probs if total is None else total + probs), target
        if scale is not None:
            per_scale[str(scale)] = metrics(probs, target)
    result = {"run": str(args.run_dir), "checkpoint": args.checkpoint, "mode": args.mode,
              "split": args.split, **metrics(total / len(scales), labels, class_names(cfg.data))}
    if per_scale:
        result["per_scale"] = per_scale
    write_json(result, args.run_dir / f"eval_{args.mode}_{args.split}.json")
    print(json.dumps({k: v for k, v in result.items() if k != "per_class_accuracy"}, indent=2))
    if "per_class_accuracy" in result:
        print(per_class_table(result["per_class_accuracy"]))
    return result


def per_class_table(accuracy: dict[str, float | None], limit: int = 20) -> str:
    """Each class's accuracy, worst first (the `limit` worst of many classes)."""
    rows = sorted(accuracy.items(), key=lambda kv: (kv[1] is not None, kv[1] or 0.0))
    shown = rows[:limit]
    width = max(len(name) for name, _ in shown)
    lines = [f"per-class accuracy ({'worst ' + str(limit) + ' of ' if len(rows) > limit else ''}"
             f"{len(rows)} classes):"]
    lines += [f"  {name:<{width}}  " + ("no images" if acc is None else f"{acc:6.2f}%")
              for name, acc in shown]
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, RunError, RecordsError, FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
