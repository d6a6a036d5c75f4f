"""ResNets of He et al. 2015 and seed 000, and the paper's plain nets, by name:
`build_model("resnet32", num_classes=10)`, `build_model("plain20", num_classes=10)`."""

import torch
from torch import nn

from models.resnet import FACTORIES, ResNet

MODELS: tuple[str, ...] = tuple(sorted(FACTORIES))


def build_model(name: str, num_classes: int, shortcut: str | None = None, **kwargs) -> nn.Module:
    """Build model `name` with `num_classes` outputs.

    shortcut: None for the family default ("A" for the paper CIFAR nets, "B" for the ImageNet nets
    and cifar_resnet*, "none" for plain*); paper CIFAR and ImageNet nets take "A"/"B"/"C",
    cifar_resnet* take "A-avg"/"B" (aliases "identity"/"projection"), the plain nets
    (plain20/32/44/56/110, plain18/34) only "none".
    kwargs: zero_init_residual (bool, default False; refused for the plain nets), stride_in_1x1
    (bool, default True; False only for bottleneck nets, giving torchvision's stride on the 3x3
    conv).
    """
    if name not in FACTORIES:
        raise ValueError(f"unknown model {name!r}; choose from {list(MODELS)}")
    return FACTORIES[name](num_classes=num_classes, shortcut=shortcut, **kwargs)


def shortcut_of(name: str, shortcut: str | None = None) -> str:
    """The canonical shortcut kind model `name` is built with ("A", "A-avg", "B", "C", "none"):
    the family default for None, aliases resolved ("identity" -> "A-avg")."""
    with torch.device("meta"):  # the factory resolves it; meta tensors cost nothing
        return build_model(name, num_classes=10, shortcut=shortcut).shortcut


__all__ = ["MODELS", "ResNet", "build_model", "shortcut_of"]
