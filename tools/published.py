"""The published numbers respipe's runs are compared with, each beside its source. The only place
they live: tools/table.py looks runs up here.

A row is keyed by (model, canonical shortcut, dataset, protocol); protocol says how the number is
measured: "test" (CIFAR's test set, one view), "center" (ImageNet val, one center crop),
"tencrop" and "multiscale" (train/evaluate.py --mode). Numbers are top-1, in % of `metric`
("error" or "accuracy", whichever the source printed). `value` None: the source has the net but
no number for it (the paper's plain CIFAR nets appear only in Figure 6).
`full_schedule` is the length of the recipe (in configs/) the number stands for, (unit, total):
a completed run much shorter than that is flagged by the table as shortened.
"""
from __future__ import annotations

from dataclasses import dataclass

PAPER = "He et al. 2015, arXiv:1512.03385"
SEED000 = "seed 000 (shared/seeds/000_6676e87bd8e3ab76.txt), README table"
SEED004 = "seed 004 (shared/seeds/004_813ddfc1f55ea9b0.txt), Sec. 2.2.2"
PAPER_CIFAR_SCHEDULE = ("iter", 64000)
SEED000_SCHEDULE = ("epoch", 300)  # the seed states only "x0.1 every 100 epochs"; configs chose 300
IMAGENET_SCHEDULE = ("epoch", 120)  # configs/resnet34_B.yaml (the paper: ~60e4 iterations)


@dataclass(frozen=True)
class Published:
    table: str
    row: str
    model: str
    shortcut: str
    dataset: str
    protocol: str
    metric: str  # "error" | "accuracy" (top-1, %)
    value: float | None
    source: str
    full_schedule: tuple[str, int]

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.model, self.shortcut, self.dataset, self.protocol


def _paper_cifar() -> list[Published]:
    table = "paper Table 6: CIFAR-10, option A"
    errors = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}
    rows = [Published(table, f"ResNet-{depth}", f"resnet{depth}", "A", "cifar10", "test",
                      "error", error, f"{PAPER}, Table 6"
                      + (" (best of 5 runs; mean 6.61±0.16)" if depth == 110 else ""),
                      PAPER_CIFAR_SCHEDULE)
            for depth, error in errors.items()]
    rows += [Published(table, f"plain-{depth}", f"plain{depth}", "none", "cifar10", "test",
                       "error", None, f"{PAPER}, Figure 6 (curves only, no table row)",
                       PAPER_CIFAR_SCHEDULE)
             for depth in (20, 32, 44, 56, 110)]
    return rows


def _seed000() -> list[Published]:
    # (depth, dataset): (without identity = projection "B", with identity = "A-avg")
    accuracy = {(10, "cifar10"): (94.2, 94.4), (18, "cifar10"): (94.8, 95.0),
                (34, "cifar10"): (93.5, 95.5), (50, "cifar10"): (90.3, 95.0),
                (10, "cifar100"): (75.5, 75.3), (18, "cifar100"): (76.7, 79.2),
                (34, "cifar100"): (71.4, 79.4)}
    rows = []
    for (depth, dataset), (without, with_) in accuracy.items():
        name = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[dataset]
        for shortcut, label, value in (("B", "without identity", without),
                                       ("A-avg", "with identity", with_)):
            rows.append(Published("seed 000: with/without identity shortcuts",
                                  f"ResNet-{depth} {name} {label}", f"cifar_resnet{depth}",
                                  shortcut, dataset, "test", "accuracy", value, SEED000,
                                  SEED000_SCHEDULE))
    return rows


def _imagenet() -> list[Published]:
    def row(table, name, model, shortcut, protocol, error, source):
        return Published(table, name, model, shortcut, "imagenet", protocol, "error", error,
                         source, IMAGENET_SCHEDULE)

    t2 = "paper Table 2: ImageNet val, 10-crop"
    t34 = "paper Tables 3-4: ImageNet val, ResNet-34"
    seed = "seed 004: ImageNet val, ResNet-34 B"
    return [
        row(t2, "plain-18", "plain18", "none", "tencrop", 27.94, f"{PAPER}, Table 2"),
        row(t2, "plain-34", "plain34", "none", "tencrop", 28.54, f"{PAPER}, Table 2"),
        row(t2, "ResNet-18 A", "resnet18", "A", "tencrop", 27.88, f"{PAPER}, Table 2"),
        row(t2, "ResNet-34 A", "resnet34", "A", "tencrop", 25.03, f"{PAPER}, Tables 2 and 3"),
        row(t34, "ResNet-34 B 10-crop", "resnet34", "B", "tencrop", 24.52, f"{PAPER}, Table 3"),
        row(t34, "ResNet-34 C 10-crop", "resnet34", "C", "tencrop", 24.19, f"{PAPER}, Table 3"),
        row(t34, "ResNet-34 B multi-scale", "resnet34", "B", "multiscale", 21.84,
            f"{PAPER}, Table 4 (fully-convolutional, scales 224-640)"),
        row(t34, "ResNet-34 C multi-scale", "resnet34", "C", "multiscale", 21.53,
            f"{PAPER}, Table 4 (fully-convolutional, scales 224-640)"),
        row(seed, "center crop (best epoch)", "resnet34", "B", "center", 27.27,
            f"{SEED004}: lowest center-crop val error"),
        row(seed, "multi-scale", "resnet34", "B", "multiscale", 30.05,
            f"{SEED004}: 100 - 69.95% top-1, the mean of the single-scale accuracies at "
            "224/256/384/480/640 (respipe averages the scores instead)"),
    ]


PUBLISHED: tuple[Published, ...] = tuple(_paper_cifar() + _seed000() + _imagenet())


def lookup(model: str, shortcut: str, dataset: str) -> list[Published]:
    """Every published row for this net on this dataset, in PUBLISHED's order."""
    return [p for p in PUBLISHED if p.key[:3] == (model, shortcut, dataset)]
