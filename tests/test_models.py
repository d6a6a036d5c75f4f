import math

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models import MODELS, build_model
from models.resnet import ZeroPadShortcut

PAPER_CIFAR = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202")
SEED_CIFAR = ("cifar_resnet10", "cifar_resnet18", "cifar_resnet34", "cifar_resnet50")
IMAGENET = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
PLAIN_CIFAR = ("plain20", "plain32", "plain44", "plain56", "plain110")
PLAIN_IMAGENET = ("plain18", "plain34")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Shapes only: fast to build, and enough for parameter and MAC counts."""
    with torch.device("meta"):
        return build_model(name, num_classes, **kwargs)


def macs(model: nn.Module, size: int) -> float:
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, size, size, device="meta"))
    return counter.get_total_flops() / 2


def blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "zero_init_last")]


def test_registry_lists_every_family():
    assert MODELS == tuple(sorted(PAPER_CIFAR + SEED_CIFAR + IMAGENET + PLAIN_CIFAR +
                                  PLAIN_IMAGENET))


@pytest.mark.parametrize("name,millions", [
    ("resnet20", 0.27), ("resnet32", 0.46), ("resnet44", 0.66), ("resnet56", 0.85),
    ("resnet110", 1.7), ("resnet1202", 19.4),
])
def test_paper_cifar_parameter_counts(name, millions):
    """Table 6 of the paper (option A, CIFAR-10)."""
    count = n_params(meta_model(name, 10, shortcut="A"))
    digits = 1 if millions >= 1 else 2
    assert round(count / 1e6, digits) == millions, count


@pytest.mark.parametrize("name,size,expected,kwargs", [
    ("resnet18", 224, 1.8e9, {}),
    ("resnet34", 224, 3.6e9, {}),
    ("resnet50", 224, 3.8e9, {}),
    ("resnet50", 224, 4.1e9, {"stride_in_1x1": False}),
    ("resnet101", 224, 7.6e9, {}),
    ("resnet152", 224, 11.3e9, {}),
    ("resnet20", 32, 41e6, {}),
    ("resnet56", 32, 126e6, {}),
])
def test_multiply_adds_match_paper(name, size, expected, kwargs):
    counted = macs(meta_model(name, 1000 if name in IMAGENET else 10, **kwargs), size)
    assert abs(counted / expected - 1) < 0.05, counted


def shortcut_modules(model: nn.Module) -> list[nn.Module | None]:
    return [b.downsample for b in blocks(model)]


def test_option_a_shortcuts_own_no_parameters():
    for name in ("resnet20", "resnet18", "resnet50"):
        a = meta_model(name, shortcut="A")
        b = meta_model(name, shortcut="B")
        assert n_params(a) < n_params(b)
        downs = [d for d in shortcut_modules(a) if d is not None]
        assert downs and all(isinstance(d, ZeroPadShortcut) for d in downs)
        assert all(n_params(d) == 0 and not list(d.buffers()) for d in downs)
    avg = meta_model("cifar_resnet50", shortcut="identity")
    assert avg.shortcut == "A-avg"
    assert all(d is None or n_params(d) == 0 for d in shortcut_modules(avg))
    # A plain net's parameters = the A net's; B adds exactly the projection parameters.
    b20 = meta_model("resnet20", shortcut="B")
    proj = sum(n_params(d) for d in shortcut_modules(b20) if d is not None)
    assert n_params(b20) - proj == n_params(meta_model("resnet20", shortcut="A"))


@pytest.mark.parametrize("name,changes", [
    ("resnet20", 2), ("resnet18", 3), ("resnet50", 4), ("cifar_resnet50", 4),
])
def test_option_b_projects_only_where_shape_changes_and_c_everywhere(name, changes):
    b = shortcut_modules(meta_model(name, shortcut="B"))
    assert sum(d is not None for d in b) == changes
    assert all(isinstance(d[0], nn.Conv2d) and d[0].kernel_size == (1, 1) and
               isinstance(d[1], nn.BatchNorm2d) for d in b if d is not None)
    if name != "cifar_resnet50":
        c = shortcut_modules(meta_model(name, shortcut="C"))
        assert all(isinstance(d, nn.Sequential) for d in c)


def test_zero_pad_shortcuts_compute_subsample_and_avg_pool():
    x = torch.randn(2, 4, 6, 6)
    a = ZeroPadShortcut(4, 8, 2, "subsample")(x)
    assert a.shape == (2, 8, 3, 3)
    torch.testing.assert_close(a[:, :4], x[:, :, ::2, ::2])
    assert not a[:, 4:].any()
    avg = ZeroPadShortcut(4, 8, 2, "avg")(x)
    torch.testing.assert_close(avg[:, :4], nn.functional.avg_pool2d(x, 2))
    assert not avg[:, 4:].any()
    # Bottleneck stage 1 grows channels 64 -> 256 at stride 1: zero channels, no pooling.
    net = meta_model("cifar_resnet50", shortcut="A-avg")
    first = net.layer1[0].downsample
    assert first.stride == 1 and first.extra == 192


@pytest.mark.parametrize("name,kwargs", [
    ("resnet18", {}), ("resnet34", {}), ("resnet50", {"stride_in_1x1": False}),
])
def test_torchvision_state_dict_round_trip(name, kwargs):
    torch.manual_seed(0)
    ours = build_model(name, 1000, shortcut="B", **kwargs).eval()
    theirs = getattr(torchvision.models, name)(weights=None).eval()
    # Randomize BN statistics so the comparison exercises every buffer.
    for m in theirs.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-4)
    theirs.load_state_dict(build_model(name, 1000, **kwargs).state_dict(), strict=True)


def test_paper_bottleneck_strides_the_first_1x1():
    paper = meta_model("resnet50")
    tv = meta_model("resnet50", stride_in_1x1=False)
    assert paper.layer2[0].conv1.stride == (2, 2) and paper.layer2[0].conv2.stride == (1, 1)
    assert tv.layer2[0].conv1.stride == (1, 1) and tv.layer2[0].conv2.stride == (2, 2)


FORWARD_CASES = [(n, s) for n in PAPER_CIFAR if n != "resnet1202" for s in "ABC"]
FORWARD_CASES += [(n, s) for n in SEED_CIFAR for s in ("A-avg", "B")]
FORWARD_CASES += [(n, None) for n in IMAGENET] + [("resnet18", "A"), ("resnet50", "A"),
                                                  ("resnet18", "C"), ("resnet50", "C")]


@pytest.mark.parametrize("name,shortcut", FORWARD_CASES)
def test_forward_backward_cpu(name, shortcut):
    torch.manual_seed(0)
    size = 64 if name in IMAGENET else 32
    model = build_model(name, 7, shortcut=shortcut)
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_odd_input_size_and_channels_last_bf16_autocast_cpu():
    model = build_model("cifar_resnet18", 10, shortcut="A-avg").to(
        memory_format=torch.channels_last).eval()
    x = torch.randn(2, 3, 33, 33).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (2, 10) and out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("name,shortcut", [
    ("resnet32", "A"), ("cifar_resnet18", "A-avg"), ("resnet50", "B"), ("resnet18", "A"),
])
def test_forward_backward_channels_last_bf16(name, shortcut, device):
    size = 224 if name in IMAGENET else 32
    model = build_model(name, 10, shortcut=shortcut).to(device, memory_format=torch.channels_last)
    x = torch.randn(8, 3, size, size, device=device).to(memory_format=torch.channels_last)
    with torch.autocast(device, dtype=torch.bfloat16):
        out = model(x)
        loss = nn.functional.cross_entropy(out, torch.randint(0, 10, (8,), device=device))
    loss.backward()
    assert out.shape == (8, 10) and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_he_init_and_bn_init():
    torch.manual_seed(0)
    model = build_model("resnet18", 1000)
    conv = model.layer4[1].conv2  # 512x512x3x3
    fan_out = conv.out_channels * 9
    assert abs(conv.weight.std().item() / math.sqrt(2 / fan_out) - 1) < 0.1
    assert abs(conv.weight.mean().item()) < 1e-3
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert (m.weight == 1).all() and (m.bias == 0).all()


@pytest.mark.parametrize("name", ["resnet20", "resnet50"])
def test_zero_init_residual_zeroes_last_bn_of_each_block(name):
    model = build_model(name, 10, zero_init_residual=True)
    last = [getattr(b, "bn3", b.bn2) for b in blocks(model)]
    assert len(last) == (9 if name == "resnet20" else 16)
    assert all((bn.weight == 0).all() for bn in last)
    assert (model.bn1.weight == 1).all() and (blocks(model)[0].bn1.weight == 1).all()
    plain = build_model(name, 10)
    assert all((getattr(b, "bn3", b.bn2).weight == 1).all() for b in blocks(plain))


@pytest.mark.parametrize("call,bad", [
    (lambda: build_model("resnet21", 10), "resnet21"),
    (lambda: build_model("resnet20", 10, shortcut="D"), "D"),
    (lambda: build_model("resnet20", 10, shortcut="A-avg"), "A-avg"),
    (lambda: build_model("cifar_resnet18", 10, shortcut="C"), "C"),
    (lambda: build_model("resnet18", 10, shortcut="identity"), "identity"),
    (lambda: build_model("resnet18", 10, stride_in_1x1=False), "stride_in_1x1"),
])
def test_build_model_errors_name_the_bad_value(call, bad):
    with pytest.raises(ValueError, match=bad) as info:
        call()
    assert "choose from" in str(info.value) or "bottleneck" in str(info.value)


def test_defaults_and_aliases():
    assert meta_model("resnet32").shortcut == "A"
    assert meta_model("resnet34").shortcut == "B"
    assert meta_model("cifar_resnet34").shortcut == "B"
    assert meta_model("cifar_resnet34", shortcut="projection").shortcut == "B"
    assert meta_model("cifar_resnet10").fc.out_features == 10


# --- plain nets (the paper's Fig. 6 and Table 2): the ResNets with no shortcuts -----------------

@pytest.mark.parametrize("name,count", [
    ("plain20", 269_722), ("plain32", 464_154), ("plain44", 658_586), ("plain56", 853_018),
    ("plain110", 1_727_962),
])
def test_plain_cifar_parameter_counts_equal_option_a(name, count):
    plain = meta_model(name)
    assert plain.shortcut == "none"
    assert n_params(plain) == count
    assert n_params(meta_model(name.replace("plain", "resnet"), shortcut="A")) == count


@pytest.mark.parametrize("name,count", [("plain18", 11_515_688), ("plain34", 21_623_848)])
def test_plain_imagenet_parameter_counts_are_option_b_minus_projections(name, count):
    plain = meta_model(name, 1000)
    resnet = meta_model(name.replace("plain", "resnet"), 1000, shortcut="B")
    proj = [d for d in shortcut_modules(resnet) if d is not None]
    assert len(proj) == 3
    assert n_params(plain) == n_params(resnet) - sum(n_params(d) for d in proj) == count
    # Same tensors under the same (torchvision) names, less the projections.
    ours = {k: v.shape for k, v in plain.state_dict().items()}
    theirs = {k: v.shape for k, v in resnet.state_dict().items() if ".downsample." not in k}
    assert ours == theirs


@pytest.mark.parametrize("name", PLAIN_CIFAR + PLAIN_IMAGENET)
def test_plain_nets_have_no_shortcut_modules(name):
    model = meta_model(name)
    assert blocks(model) and all(b.downsample is None and not b.residual for b in blocks(model))
    assert not any("downsample" in n for n, _ in model.named_modules())
    assert not any("downsample" in k for k in model.state_dict())


def test_plain_block_adds_nothing():
    torch.manual_seed(0)
    model = build_model("plain20", 10).eval()
    for m in model.modules():  # non-trivial BN so the check sees every term
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    relu = nn.functional.relu
    # layer1[1]: same shape in and out; layer2[0]: stride 2, 16 -> 32 channels (where option A
    # would subsample and zero-pad).
    for block in (model.layer1[1], model.layer2[0]):
        x = torch.randn(2, 16, 8, 8)
        with torch.no_grad():
            expected = relu(block.bn2(block.conv2(relu(block.bn1(block.conv1(x))))))
            torch.testing.assert_close(block(x.clone()), expected, rtol=0, atol=0)
    assert block(x).shape == (2, 32, 4, 4)


@pytest.mark.parametrize("plain,resnet", [
    ("plain20", "resnet20"), ("plain110", "resnet110"), ("plain18", "resnet18"),
])
def test_plain_init_equals_resnet_option_a_under_the_same_seed(plain, resnet):
    """Option A owns no parameters, so the same seed must give the same tensors: the RNG draws
    happen in the same order, and as many of them (the generator ends in the same state)."""
    torch.manual_seed(123)
    ours = build_model(plain, 10).state_dict()
    ours_rng = torch.get_rng_state()
    torch.manual_seed(123)
    theirs = build_model(resnet, 10, shortcut="A").state_dict()
    assert torch.equal(ours_rng, torch.get_rng_state())
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("name,size", [("plain20", 32), ("plain18", 224)])
def test_plain_macs_equal_resnet_option_a(name, size):
    """The paper: plain and residual nets have the same FLOPs (option A's shortcuts cost none)."""
    classes = 1000 if name in PLAIN_IMAGENET else 10
    plain = macs(meta_model(name, classes), size)
    resnet = macs(meta_model(name.replace("plain", "resnet"), classes, shortcut="A"), size)
    assert abs(plain / resnet - 1) < 0.01, (plain, resnet)


@pytest.mark.parametrize("name,size", [("plain20", 32), ("plain18", 64)])
def test_plain_forward_backward_cpu(name, size):
    torch.manual_seed(0)
    model = build_model(name, 7)
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_plain_nets_refuse_shortcuts_and_zero_init_residual():
    assert meta_model("plain20", shortcut="none").shortcut == "none"
    for shortcut in ("A", "B", "C", "identity"):
        with pytest.raises(ValueError, match=f"'{shortcut}' for plain20 .*no shortcuts"):
            build_model("plain20", 10, shortcut=shortcut)
    with pytest.raises(ValueError, match="'B' for plain34 .*choose from \\['none'\\]"):
        build_model("plain34", 10, shortcut="B")
    for name in ("plain20", "plain18"):
        with pytest.raises(ValueError, match=f"zero_init_residual.*{name}"):
            build_model(name, 10, zero_init_residual=True)
    # The ResNets keep their own names: no shortcut means the plain net, by its name.
    for name in ("resnet20", "resnet18", "cifar_resnet18"):
        with pytest.raises(ValueError, match="'none'.*choose from"):
            build_model(name, 10, shortcut="none")
