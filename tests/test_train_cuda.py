"""The GPU training path, with its set-up on the CPU too (every test is parametrized over cpu and
cuda; cuda is skipped without a GPU): bf16 autocast, channels_last, torch.compile and the
whole-step CUDA graph in the real loop, and on CUDA `torch.cuda.set_sync_debug_mode("error")`
around hot-loop steps to prove that no step waits for the host."""
from __future__ import annotations

import pytest
import torch

from fixtures import tiny_args, write_tiny_cifar
from pipelines import build_loader
from train.build import model_for, precision
from train.checkpoint import load_checkpoint
from train.config import load_config
from train.distributed import DistEnv
from train.loop import LoopSettings, RunHooks, TrainState, train_one_epoch
from train.meter import Meter
from train.run import main
from train.schedule import LRSchedule, build_optimizer
from train.step import COMPILE_PAYS_AFTER, TrainStep, plan_step

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


class SyncGuard:
    """Yields the loader's batches; on CUDA with sync debug mode "error" from batch `first` to
    the one before `last`: those steps run entirely under the guard (the last step logs, a host
    sync)."""

    def __init__(self, loader, first: int, last: int, device: torch.device):
        self.loader, self.first, self.last = loader, first, last
        self.cuda = device.type == "cuda"

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, epoch, start=0):
        self.loader.set_epoch(epoch, start)

    def __iter__(self):
        try:
            for i, batch in enumerate(self.loader):
                if self.cuda:
                    torch.cuda.set_sync_debug_mode("error" if self.first <= i < self.last else 0)
                yield batch
        finally:
            if self.cuda:
                torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("compile_mode,graph", [(False, False), ("default", False),
                                                (False, True)])
def test_hot_loop_makes_no_host_syncs(tmp_path, device, compile_mode, graph):
    """15 steps, one log step at the end: no step between waits for the host (CUDA), and the
    loop's sums count every image once (all modes, the graph's warm-up and capture included)."""
    if graph and device == "cpu":
        pytest.skip("CUDA graphs need CUDA; TrainStep's graph route refuses the CPU (tested)")
    if compile_mode and device == "cpu":
        pytest.skip("a compiled CPU step: tests/test_speed_watch.py")
    records = write_tiny_cifar(tmp_path)
    cfg = load_config("configs/resnet20.yaml", [f"data.root={records}", "data.val_size=0",
                                                "data.batch_size=32", "run.amp=bf16"])
    device = torch.device(device)
    loader = build_loader(cfg.data, "train", device)  # 480 images: 15 batches
    model = model_for(cfg, device)
    prec = precision(cfg, device)
    assert prec.memory_format is torch.channels_last
    run_model = torch.compile(model, mode=compile_mode) if compile_mode else model
    step = TrainStep(run_model, build_optimizer(model, cfg.optim, device), prec, device,
                     graph=graph)
    logs = []
    settings = LoopSettings(total_iters=10_000, log_every=1000, ckpt_every=0, progress=False)
    state = TrainState()
    schedule = LRSchedule(cfg.schedule, cfg.optim.lr, len(loader))
    train_one_epoch(step, SyncGuard(loader, first=5, last=14, device=device), schedule, state,
                    settings, Meter(DistEnv(0, 0, 1, device)), RunHooks(on_log=logs.append))
    assert state.iteration == 15 and len(logs) == 1  # one host sync: at the epoch's end
    assert logs[0]["loss"] > 0 and 0 <= logs[0]["error"] <= 100
    assert step.calls == 15


def test_graph_step_refuses_the_cpu():
    model = torch.nn.Linear(4, 2)
    cfg = load_config(None, [])
    prec = precision(cfg, torch.device("cpu"))
    with pytest.raises(ValueError, match="needs a CUDA device"):
        TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), prec,
                  torch.device("cpu"), graph=True)
    with pytest.raises(ValueError, match="needs one CUDA process"):
        plan_step("auto", True, torch.device("cpu"), 1, None)
    assert not plan_step("auto", "auto", torch.device("cpu"), 1, None).graph


def test_auto_compiles_on_cuda_only_when_the_run_pays_it_back():
    """run.compile=auto on CUDA: torch.compile inside the whole-step graph for a long run (the
    paper's 64k iterations, or a length not given); the graph alone for a short one (the
    quickstart's 900), saying why; an explicit mode is kept whatever the length."""
    cuda, bf16 = torch.device("cuda"), torch.bfloat16  # a plan only: no device is touched
    paper = plan_step("auto", "auto", cuda, 1, bf16, iterations=64_000)
    assert (paper.compile, paper.graph) == ("default", True)
    assert paper.why == "torch.compile default, whole step as one CUDA graph"
    assert plan_step("auto", "auto", cuda, 1, bf16).compile == "default"
    edge = plan_step("auto", "auto", cuda, 1, bf16, iterations=COMPILE_PAYS_AFTER)
    assert edge.compile == "default"
    quick = plan_step("auto", "auto", cuda, 1, bf16, iterations=900)
    assert (quick.compile, quick.graph) == (False, True)
    assert quick.why == ("eager, whole step as one CUDA graph (run.compile=auto: torch.compile "
                         "pays its compiling back after about 30,000 iterations, this run has "
                         "900)")
    assert plan_step("default", "auto", cuda, 1, bf16, iterations=900).compile == "default"
    ddp = plan_step("auto", "auto", cuda, 2, bf16, iterations=900)
    assert (ddp.compile, ddp.graph) == (False, False)
    assert plan_step("auto", "auto", torch.device("cpu"), 1, bf16, iterations=10**6).why == "eager"



def test_a_run_plans_its_step_for_its_own_length(tmp_path, monkeypatch):
    """train/run.py hands plan_step the run's iterations (2 epochs of 13 here), so that
    run.compile=auto on CUDA can weigh compiling against the run's length; the run header says
    the plan's reason."""
    import train.run

    seen = []

    def recording(*args, **kwargs):
        seen.append(args[5] if len(args) > 5 else kwargs.get("iterations"))
        return plan_step(*args, **kwargs)

    monkeypatch.setattr(train.run, "plan_step", recording)
    records = write_tiny_cifar(tmp_path / "data")
    result = main(tiny_args(records, tmp_path, "run"))
    assert result.status == "completed" and seen == [None, 26]
    assert result.summary["iterations"] == 26 and result.summary["step"] == "eager"

@pytest.fixture
def deterministic():
    """cuDNN's deterministic algorithms, no TF32: two eager runs are bit-identical (on an H200,
    benchmarked TF32 algorithms left them 0.017 apart after 8 steps at lr 0.1)."""
    backends = torch.backends
    saved = (backends.cudnn.deterministic, backends.cudnn.benchmark, backends.cudnn.allow_tf32,
             backends.cuda.matmul.allow_tf32)
    backends.cudnn.deterministic, backends.cudnn.benchmark = True, False
    backends.cudnn.allow_tf32 = backends.cuda.matmul.allow_tf32 = False
    yield
    (backends.cudnn.deterministic, backends.cudnn.benchmark, backends.cudnn.allow_tf32,
     backends.cuda.matmul.allow_tf32) = saved


@pytest.mark.parametrize("device", DEVICES)
def test_graph_step_trains_like_the_eager_step(device, deterministic):
    """The same 8 steps (lr changing at step 5) in a CUDA graph and eagerly: bit-identical
    weights and sums (measured so on an H200). On the CPU both routes run eagerly: the
    comparison's set-up is what CI checks there."""
    device = torch.device(device)
    cfg = load_config("configs/resnet20.yaml", ["run.amp=none", "data.channels_last=false"])
    prec = precision(cfg, device)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 3, 32, 32, generator=gen).to(device),
                torch.randint(10, (16,), generator=gen).to(device)) for _ in range(8)]
    finals = []
    for graph in (False, device.type == "cuda"):
        torch.manual_seed(0)
        model = model_for(cfg, device)
        step = TrainStep(model, build_optimizer(model, cfg.optim, device), prec, device,
                         graph=graph)
        for i, (images, labels) in enumerate(batches):
            step.set_lr(0.1 if i < 5 else 0.01)
            step(images, labels)
        finals.append(([p.detach().cpu() for p in model.parameters()], step.take_sums().cpu()))
    (a, sums_a), (b, sums_b) = finals
    assert all(torch.equal(pa, pb) for pa, pb in zip(a, b))
    assert torch.equal(sums_a, sums_b)
    assert sums_a[2].item() == 8 * 16


@pytest.mark.parametrize("device", DEVICES)
def test_run_with_bf16_channels_last_and_the_fastest_step(tmp_path, device):
    """A whole run in the step mode a long run gets from run.compile=auto / run.cuda_graph=auto
    (CUDA: a compiled model in a whole-step graph, asked for by name since this run is short;
    CPU: its resolved default) with bf16 and channels_last."""
    records = write_tiny_cifar(tmp_path / "data")
    amp = "bf16" if device == "cuda" else "none"
    compile_mode = "default" if device == "cuda" else "auto"
    result = main(tiny_args(records, tmp_path, "run", f"run.device={device}", f"run.amp={amp}",
                            "data.channels_last=true", f"run.compile={compile_mode}"))
    assert result.status == "completed"
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in ckpt["model"])
    assert (result.summary["device"] != "cpu") == (device == "cuda")
    assert result.summary["final"]["test"]["count"] == 120
    assert result.summary["step"].endswith("one CUDA graph") == (device == "cuda")
    assert result.summary["speed"]["recompiles_after_warmup"] == []
