"""Seed 000's feature-relevance picture of a trained run, as one PNG:

  .venv/bin/python tools/feature_grid.py RUN_DIR [--split test] [--features K]
      [--out grid.png] [--device cpu] [key=value ...]

The penultimate features (global-average-pooled, the fc layer's input) of every image of the
split, from RUN_DIR/best.pt (an unfinished run's best so far, with a note). One row per feature
(or per each of the K features of largest variance, in index order): the images sorted by the
magnitude of that feature, the 10 least relevant on the left half and the 10 most relevant on
the right, magnitude rising left to right across the row; the feature's index on the left and a
thin red line between the halves. The images are what the net saw (the split's eval view),
un-normalized. key=value overrides apply to the run's config (e.g. data.root=... on another
machine).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from tqdm import tqdm  # noqa: E402

from pipelines import build_loader, report_split  # noqa: E402
from pipelines.ops import unnormalize  # noqa: E402
from records.format import RecordsError  # noqa: E402
from tools.runs import read_run  # noqa: E402
from train.build import load_run, precision  # noqa: E402
from train.checkpoint import CheckpointError  # noqa: E402
from train.config import ConfigError  # noqa: E402

PER_SIDE = 10
MAX_CELL = 64  # larger eval views (ImageNet's 224) are shrunk to this by default


@dataclass(frozen=True)
class Layout:
    """Where everything sits in the grid: row r, column c (0..2*PER_SIDE-1) has its top-left
    pixel at cell_origin(r, c)."""

    rows: int
    cell: int
    label_width: int = 36
    separator: int = 4
    row_gap: int = 2

    def cell_origin(self, row: int, col: int) -> tuple[int, int]:
        """(top, left) of a cell."""
        top = row * (self.cell + self.row_gap)
        left = self.label_width + col * self.cell + (self.separator if col >= PER_SIDE else 0)
        return top, left

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the whole image."""
        return (self.rows * (self.cell + self.row_gap) - self.row_gap,
                self.label_width + 2 * PER_SIDE * self.cell + self.separator)


@torch.inference_mode()
def extract_features(model, loader, prec) -> torch.Tensor:
    """(N, D) penultimate features in the loader's order, float32 on the CPU."""
    out = []
    for images, _ in tqdm(loader, desc="features", unit="batch", leave=False):
        with prec.autocast():
            features = model.forward_head(model.forward_features(images), pre_logits=True)
        out.append(features.float().cpu())
    return torch.cat(out)


def choose(features: torch.Tensor, k: int | None) -> tuple[list[int], torch.Tensor]:
    """(feature indices, image indices (rows, 2*PER_SIDE)): every feature or the k of largest
    variance, each row its PER_SIDE smallest- then PER_SIDE largest-magnitude images, in rising
    magnitude (a stable sort: ties keep the loader's order)."""
    n, d = features.shape
    if n < 2 * PER_SIDE:
        raise ValueError(f"the split has {n} images; the grid needs {2 * PER_SIDE} at least")
    if k is None or k >= d:
        chosen = list(range(d))
    else:
        chosen = sorted(features.var(dim=0).topk(k).indices.tolist())
    order = features[:, chosen].abs().T.sort(dim=1, stable=True).indices
    return chosen, torch.cat([order[:, :PER_SIDE], order[:, -PER_SIDE:]], dim=1)


@torch.inference_mode()
def gather_images(loader, data_cfg, wanted: set[int]) -> dict[int, np.ndarray]:
    """{index in the loader's order: uint8 HWC pixels} of the wanted images (a second pass, so
    only these are kept: ImageNet's val set would not fit in memory)."""
    found, start = {}, 0
    for images, _ in tqdm(loader, desc="images", unit="batch", leave=False):
        hits = [i for i in range(len(images)) if start + i in wanted]
        if hits:
            pixels = (unnormalize(images[hits].cpu(), data_cfg) * 255).round().clamp(0, 255)
            for i, image in zip(hits, pixels.to(torch.uint8).permute(0, 2, 3, 1).numpy()):
                found[start + i] = image
        start += len(images)
    if len(found) != len(wanted):
        raise RuntimeError(f"the second pass over the split found {len(found)} of "
                           f"{len(wanted)} images: the loader's order is not repeatable")
    return found


def compose(chosen: list[int], indices: torch.Tensor, images: dict[int, np.ndarray],
            cell: int) -> Image.Image:
    layout = Layout(len(chosen), cell)
    canvas = Image.new("RGB", layout.size[::-1], "white")
    draw = ImageDraw.Draw(canvas)
    for row, (feature, picks) in enumerate(zip(chosen, indices.tolist())):
        top, _ = layout.cell_origin(row, 0)
        draw.text((2, top + cell // 2 - 5), str(feature), fill="black")
        _, left = layout.cell_origin(row, PER_SIDE)
        draw.rectangle([left - layout.separator + 1, top, left - 2, top + cell - 1], fill="red")
        for col, index in enumerate(picks):
            tile = Image.fromarray(images[index])
            if tile.size != (cell, cell):
                tile = tile.resize((cell, cell), Image.Resampling.LANCZOS)
            canvas.paste(tile, layout.cell_origin(row, col)[::-1])
    return canvas


def feature_grid(run_dir: str | Path, split: str | None = None, k: int | None = None,
                 out: str | Path | None = None, device: str | None = None,
                 cell: int | None = None, overrides=()) -> Path:
    """Write the grid PNG (default RUN_DIR/features_<split>.png) and return its path."""
    if split == "train":
        raise ValueError("--split train: its loader shuffles and augments, so the images cannot "
                         "be found again; use val or test")
    run = read_run(run_dir)
    if not (run.path / "best.pt").is_file():
        raise FileNotFoundError(f"{run.path / 'best.pt'}: no such checkpoint yet (a run writes "
                                "it at its first evaluation)")
    if not run.finished:
        print(f"note: {run.label}: the grid shows its best model so far", file=sys.stderr)
    if (device or run.cfg.run.device) == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda: torch sees no CUDA device here; use --device cpu")
    cfg, model = load_run(run_dir, "best.pt", overrides, device)
    dev = next(model.parameters()).device
    split = split or report_split(cfg.data)
    loader = build_loader(cfg.data, split, dev)
    features = extract_features(model, loader, precision(cfg, dev))
    chosen, indices = choose(features, k)
    images = gather_images(build_loader(cfg.data, split, dev), cfg.data,
                           set(indices.flatten().tolist()))
    size = next(iter(images.values())).shape[0]
    grid = compose(chosen, indices, images, cell or min(size, MAX_CELL))
    out = Path(out) if out else Path(run_dir) / f"features_{split}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out, optimize=True)
    print(f"{out}: {run.label}, {len(chosen)} of {features.shape[1]} features x "
          f"{2 * PER_SIDE} of {features.shape[0]} {split} images")
    return out


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--split", help="default: the split the run reports (CIFAR test, "
                        "ImageNet val)")
    parser.add_argument("--features", type=int, metavar="K",
                        help="only the K features of largest variance (default: all)")
    parser.add_argument("--out", type=Path, help="default: RUN_DIR/features_<split>.png")
    parser.add_argument("--device", help="cpu | cuda | auto (default: the run's run.device)")
    parser.add_argument("--cell", type=int, metavar="PX",
                        help=f"cell size (default: the image's, at most {MAX_CELL})")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    if args.features is not None and args.features < 1:
        parser.error(f"--features {args.features}: must be >= 1")
    return feature_grid(args.run_dir, args.split, args.features, args.out, args.device,
                        args.cell, args.overrides)


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, CheckpointError, RecordsError, FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
