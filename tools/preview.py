"""A PNG grid of what a backend hands the training loop, un-normalized back to pixels.

  .venv/bin/python tools/preview.py --backend native --dataset cifar10 \
      --root data/records/cifar10
  .venv/bin/python tools/preview.py --backend dali --dataset imagenet --root DIR --split val \
      --eval-mode tencrop --out tencrop.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torchvision.utils  # noqa: E402

from pipelines import build_loader  # noqa: E402
from pipelines.ops import unnormalize  # noqa: E402
from pipelines.spec import BACKENDS, DATASETS, EVAL_MODES, DataConfig  # noqa: E402
from records.format import RecordsError  # noqa: E402


def preview(backend: str, dataset: str, root: str, out: str = "preview.png",
            split: str = "train", count: int = 32, eval_mode: str = "center",
            scale: int | None = None, seed: int = 0, epoch: int = 0, device: str = "cpu",
            workers: int = 2) -> Path:
    """Write a grid of the first `count` images of one epoch; returns the PNG's path."""
    cfg = DataConfig(dataset=dataset, root=root, backend=backend, batch_size=count,
                     eval_batch_size=count, num_workers=workers)
    loader = build_loader(cfg, split, device, seed=seed, eval_mode=eval_mode, scale=scale)
    loader.set_epoch(epoch)
    images, labels = [], []
    for batch, batch_labels in loader:
        images.append(unnormalize(batch, cfg).float().cpu())
        labels.append(batch_labels.cpu())
        if sum(len(x) for x in images) >= count or eval_mode == "multiscale":
            break
    grid_images = torch.cat(images)[:count]
    rows = 8
    if grid_images.dim() == 5:  # tencrop: one row of ten crops per image
        rows, grid_images = grid_images.shape[1], grid_images[:4].flatten(0, 1)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torchvision.utils.save_image(grid_images.clamp(0, 1), out_path, nrow=rows, padding=2)
    print(f"{out_path}: {len(grid_images)} images {tuple(grid_images.shape[1:])}, labels "
          f"{torch.cat(labels)[:count].tolist()}")
    return out_path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=BACKENDS, required=True)
    parser.add_argument("--dataset", choices=DATASETS, required=True)
    parser.add_argument("--root", required=True, help="dataset folder written by tools/convert.py")
    parser.add_argument("--out", default="preview.png")
    parser.add_argument("--split", default="train")
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--eval-mode", choices=EVAL_MODES, default="center")
    parser.add_argument("--scale", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epoch", type=int, default=0)
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here; use --device cpu")
    preview(args.backend, args.dataset, args.root, args.out, args.split, args.count,
            args.eval_mode, args.scale, args.seed, args.epoch, args.device, args.workers)


if __name__ == "__main__":
    try:
        main()
    except (RecordsError, FileNotFoundError, ValueError, ImportError) as error:
        sys.exit(f"error: {error}")
