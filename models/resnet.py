"""The ResNets of He et al. 2015 (arXiv:1512.03385), their plain counterparts, and seed 000's
CIFAR ResNet-10/18/34/50.

Shaped like timm's resnet.py: two blocks sharing one constructor signature, shortcut choices as
small functions, one `ResNet` builder, and a registry of short named factories. Parameter names
follow torchvision (conv1/bn1/layer1..4/fc, downsample.0/.1), so option-B ImageNet nets load
torchvision's state_dicts and vice versa.

Shortcut options:
  "A"     identity; where the shape changes, stride-2 subsampling plus zero channels
          (paper option A)
  "A-avg" identity; where the shape changes, 2x2 average pooling plus zero channels
          (seed 000's "with identity")
  "B"     identity, 1x1 conv + BN projection only where the shape changes
  "C"     1x1 conv + BN projection on every block
  "none"  no shortcut at all: the block returns relu(F(x)) and adds nothing (the paper's plain
          nets, plain20..110 and plain18/34; the only choice for them, and refused for the
          ResNets, so that each net has one name). A plain net has the same layers, parameter
          names and initialisation as its ResNet with option A (CIFAR; A owns no parameters) or
          option B minus the downsample projections (ImageNet).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Parameter-free shortcut: downsample spatially, then append all-zero channels."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, pool: str):
        super().__init__()
        self.extra = out_ch - in_ch
        self.stride = stride
        self.pool = pool  # "subsample" (option A) or "avg" (option A-avg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            if self.pool == "avg":
                # ceil_mode matches the output size of the strided convs on odd inputs
                x = F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)
            else:
                x = x[:, :, ::2, ::2]
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra))
        return x

    def extra_repr(self) -> str:
        return f"pool={self.pool}, stride={self.stride}, extra_channels={self.extra}"


def downsample_zero_pad(in_ch: int, out_ch: int, stride: int, pool: str) -> nn.Module | None:
    if stride == 1 and in_ch == out_ch:
        return None
    if stride not in (1, 2) or out_ch < in_ch:
        raise ValueError(f"zero-pad shortcut cannot map {in_ch}->{out_ch} at stride {stride}")
    return ZeroPadShortcut(in_ch, out_ch, stride, pool)


def downsample_conv(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    return nn.Sequential(conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))


NO_SHORTCUT = "none"


def make_shortcut(kind: str, in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    """The block's `downsample` module for shortcut option `kind`; None means identity, or for
    kind "none" nothing (the block is built with residual=False and adds no shortcut)."""
    changes = stride != 1 or in_ch != out_ch
    if kind == NO_SHORTCUT:
        return None
    if kind == "A":
        return downsample_zero_pad(in_ch, out_ch, stride, pool="subsample")
    if kind == "A-avg":
        return downsample_zero_pad(in_ch, out_ch, stride, pool="avg")
    if kind == "B":
        return downsample_conv(in_ch, out_ch, stride) if changes else None
    if kind == "C":
        return downsample_conv(in_ch, out_ch, stride)
    raise ValueError(f"unknown shortcut kind {kind!r}; choose from 'A', 'A-avg', 'B', 'C', 'none'")


class BasicBlock(nn.Module):
    """3x3 -> 3x3. Both blocks: `downsample` None = identity shortcut; residual=False = no
    shortcut at all (a plain block, shortcut kind "none"; `downsample` must then be None)."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, stride_in_1x1: bool = True,
                 residual: bool = True):
        super().__init__()
        if not residual and downsample is not None:
            raise ValueError("a block without residual has no downsample shortcut")
        self.conv1 = conv3x3(in_ch, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.residual = residual

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1. The paper strides the first 1x1 conv (stride_in_1x1=True, ResNet-50 =
    3.8 GMACs); torchvision ("ResNet v1.5") strides the 3x3 conv (4.1 GMACs)."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, stride_in_1x1: bool = True,
                 residual: bool = True):
        super().__init__()
        if not residual and downsample is not None:
            raise ValueError("a block without residual has no downsample shortcut")
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_ch, planes, s1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, s3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.residual = residual

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class ResNet(nn.Module):
    """Stem, one stage per entry of `layers` (named layer1..), global average pool, fc.

    `imagenet_stem`: 7x7/2 conv + 3x3/2 max pool; otherwise a 3x3/1 conv and no pooling (CIFAR).
    `shortcut` is a canonical kind ("A", "A-avg", "B", "C", "none"); validate names before
    calling (the named factories also refuse zero_init_residual for "none": it would zero every
    block's output).
    """

    def __init__(self, block: type[nn.Module], layers: tuple[int, ...], widths: tuple[int, ...],
                 num_classes: int, shortcut: str, stem_width: int = 64,
                 imagenet_stem: bool = True, zero_init_residual: bool = False,
                 stride_in_1x1: bool = True):
        super().__init__()
        if len(layers) != len(widths):
            raise ValueError(f"layers {layers} and widths {widths} differ in length")
        self.shortcut = shortcut
        if imagenet_stem:
            self.conv1 = nn.Conv2d(3, stem_width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = conv3x3(3, stem_width)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)

        in_ch = stem_width
        for i, (depth, width) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(depth):
                out_ch = width * block.expansion
                s = stride if j == 0 else 1
                down = make_shortcut(shortcut, in_ch, out_ch, s)
                blocks.append(block(in_ch, width, s, down, stride_in_1x1=stride_in_1x1,
                                    residual=shortcut != NO_SHORTCUT))
                in_ch = out_ch
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.num_features = in_ch
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        self.init_weights(zero_init_residual)

    def init_weights(self, zero_init_residual: bool = False) -> None:
        """He init (fan_out, ReLU) for convs, BN weight 1 bias 0; fc keeps PyTorch's default."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if hasattr(m, "zero_init_last"):
                    m.zero_init_last()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- families and named factories -------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    widths: tuple[int, ...]
    stem_width: int
    imagenet_stem: bool
    shortcuts: tuple[str, ...]
    default_shortcut: str
    num_classes: int


PAPER_CIFAR = Family((16, 32, 64), 16, False, ("A", "B", "C"), "A", 10)
SEED_CIFAR = Family((64, 128, 256, 512), 64, False, ("A-avg", "B"), "B", 10)
IMAGENET = Family((64, 128, 256, 512), 64, True, ("A", "B", "C"), "B", 1000)
# The paper's plain nets: its CIFAR and ImageNet nets with no shortcuts (Fig. 6, Table 2).
PLAIN_CIFAR = replace(PAPER_CIFAR, shortcuts=(NO_SHORTCUT,), default_shortcut=NO_SHORTCUT)
PLAIN_IMAGENET = replace(IMAGENET, shortcuts=(NO_SHORTCUT,), default_shortcut=NO_SHORTCUT)

SHORTCUT_ALIASES = {"identity": "A-avg", "projection": "B"}


def canonical_shortcut(name: str, family: Family, shortcut: str | None) -> str:
    """The canonical shortcut kind for model `name`, or ValueError naming the valid choices."""
    if shortcut is None:
        return family.default_shortcut
    aliases = SHORTCUT_ALIASES if family is SEED_CIFAR else {}
    kind = aliases.get(shortcut, shortcut)
    if kind not in family.shortcuts:
        valid = list(family.shortcuts) + list(aliases)
        plain = " (a plain net: it has no shortcuts)" if valid == [NO_SHORTCUT] else ""
        raise ValueError(f"unknown shortcut {shortcut!r} for {name}{plain}; choose from {valid}")
    return kind


def _create(name: str, family: Family, block: type[nn.Module], layers: tuple[int, ...],
            num_classes: int | None = None, shortcut: str | None = None,
            zero_init_residual: bool = False, stride_in_1x1: bool = True) -> ResNet:
    if block is BasicBlock and not stride_in_1x1:
        raise ValueError(f"stride_in_1x1=False applies to bottleneck nets only, not {name}")
    kind = canonical_shortcut(name, family, shortcut)
    if kind == NO_SHORTCUT and zero_init_residual:
        raise ValueError(f"zero_init_residual=True makes no sense for {name}: it has no "
                         "shortcuts, so zeroing each block's last BN would zero every block")
    return ResNet(
        block, layers, family.widths,
        num_classes=family.num_classes if num_classes is None else num_classes,
        shortcut=kind, stem_width=family.stem_width,
        imagenet_stem=family.imagenet_stem, zero_init_residual=zero_init_residual,
        stride_in_1x1=stride_in_1x1,
    )


# Paper CIFAR nets: 6n+2 layers, n basic blocks per stage (Table 6).
def resnet20(**kwargs) -> ResNet:
    return _create("resnet20", PAPER_CIFAR, BasicBlock, (3, 3, 3), **kwargs)


def resnet32(**kwargs) -> ResNet:
    return _create("resnet32", PAPER_CIFAR, BasicBlock, (5, 5, 5), **kwargs)


def resnet44(**kwargs) -> ResNet:
    return _create("resnet44", PAPER_CIFAR, BasicBlock, (7, 7, 7), **kwargs)


def resnet56(**kwargs) -> ResNet:
    return _create("resnet56", PAPER_CIFAR, BasicBlock, (9, 9, 9), **kwargs)


def resnet110(**kwargs) -> ResNet:
    return _create("resnet110", PAPER_CIFAR, BasicBlock, (18, 18, 18), **kwargs)


def resnet1202(**kwargs) -> ResNet:
    return _create("resnet1202", PAPER_CIFAR, BasicBlock, (200, 200, 200), **kwargs)


# The paper's plain CIFAR nets (Fig. 6): the ResNets above without shortcuts.
def plain20(**kwargs) -> ResNet:
    return _create("plain20", PLAIN_CIFAR, BasicBlock, (3, 3, 3), **kwargs)


def plain32(**kwargs) -> ResNet:
    return _create("plain32", PLAIN_CIFAR, BasicBlock, (5, 5, 5), **kwargs)


def plain44(**kwargs) -> ResNet:
    return _create("plain44", PLAIN_CIFAR, BasicBlock, (7, 7, 7), **kwargs)


def plain56(**kwargs) -> ResNet:
    return _create("plain56", PLAIN_CIFAR, BasicBlock, (9, 9, 9), **kwargs)


def plain110(**kwargs) -> ResNet:
    return _create("plain110", PLAIN_CIFAR, BasicBlock, (18, 18, 18), **kwargs)


# Seed 000's CIFAR nets: ImageNet widths with a 3x3/1 stem and no max pool.
def cifar_resnet10(**kwargs) -> ResNet:
    return _create("cifar_resnet10", SEED_CIFAR, BasicBlock, (1, 1, 1, 1), **kwargs)


def cifar_resnet18(**kwargs) -> ResNet:
    return _create("cifar_resnet18", SEED_CIFAR, BasicBlock, (2, 2, 2, 2), **kwargs)


def cifar_resnet34(**kwargs) -> ResNet:
    return _create("cifar_resnet34", SEED_CIFAR, BasicBlock, (3, 4, 6, 3), **kwargs)


def cifar_resnet50(**kwargs) -> ResNet:
    return _create("cifar_resnet50", SEED_CIFAR, Bottleneck, (3, 4, 6, 3), **kwargs)


# ImageNet nets (Table 1).
def resnet18(**kwargs) -> ResNet:
    return _create("resnet18", IMAGENET, BasicBlock, (2, 2, 2, 2), **kwargs)


def resnet34(**kwargs) -> ResNet:
    return _create("resnet34", IMAGENET, BasicBlock, (3, 4, 6, 3), **kwargs)


# The paper's plain ImageNet nets (Table 2): resnet18/34 without shortcuts.
def plain18(**kwargs) -> ResNet:
    return _create("plain18", PLAIN_IMAGENET, BasicBlock, (2, 2, 2, 2), **kwargs)


def plain34(**kwargs) -> ResNet:
    return _create("plain34", PLAIN_IMAGENET, BasicBlock, (3, 4, 6, 3), **kwargs)


def resnet50(**kwargs) -> ResNet:
    return _create("resnet50", IMAGENET, Bottleneck, (3, 4, 6, 3), **kwargs)


def resnet101(**kwargs) -> ResNet:
    return _create("resnet101", IMAGENET, Bottleneck, (3, 4, 23, 3), **kwargs)


def resnet152(**kwargs) -> ResNet:
    return _create("resnet152", IMAGENET, Bottleneck, (3, 8, 36, 3), **kwargs)


FACTORIES: dict[str, Callable[..., ResNet]] = {f.__name__: f for f in (
    resnet20, resnet32, resnet44, resnet56, resnet110, resnet1202,
    cifar_resnet10, cifar_resnet18, cifar_resnet34, cifar_resnet50,
    resnet18, resnet34, resnet50, resnet101, resnet152,
    plain20, plain32, plain44, plain56, plain110, plain18, plain34,
)}
