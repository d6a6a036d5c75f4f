"""The memory layout a run trains in: channels_last on CUDA and on CPU (measured faster there
too, for ResNet-32 and ResNet-34); data.channels_last=false turns it off everywhere."""
import torch

from train.build import model_for, precision
from train.config import load_config


def test_channels_last_by_default_and_off_on_request():
    cpu = torch.device("cpu")
    cifar = load_config("configs/resnet20.yaml", ["run.device=cpu"])
    assert precision(cifar, cpu).memory_format is torch.channels_last
    weights = [p for p in model_for(cifar, cpu).parameters() if p.dim() == 4]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    imagenet = load_config("configs/resnet34_B.yaml", ["run.device=cpu"])
    assert precision(imagenet, cpu).memory_format is torch.channels_last
    off = load_config("configs/resnet20.yaml", ["data.channels_last=false"])
    assert precision(off, cpu).memory_format is torch.contiguous_format
