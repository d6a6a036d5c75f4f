"""Graph step vs eager step, deterministic cuDNN, no TF32: where do the weights diverge?"""
import sys

import torch

sys.path.insert(0, ".")
from train.build import model_for, precision  # noqa: E402
from train.config import load_config  # noqa: E402
from train.schedule import build_optimizer  # noqa: E402
from train.step import TrainStep  # noqa: E402

torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.deterministic = True
torch.backends.cudnn.benchmark = False
device = torch.device("cuda")
for amp in ("none", "bf16"):
    cfg = load_config("configs/resnet20.yaml", [f"run.amp={amp}", "data.channels_last=true"])
    prec = precision(cfg, device)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 3, 32, 32, generator=gen).to(device).contiguous(
        memory_format=torch.channels_last), torch.randint(10, (16,), generator=gen).to(device))
        for _ in range(8)]

    def run(graph, cfg=cfg, prec=prec, batches=batches):
        torch.manual_seed(0)
        model = model_for(cfg, device)
        step = TrainStep(model, build_optimizer(model, cfg.optim, device), prec, device,
                         graph=graph)
        snaps = []
        for i, (x, y) in enumerate(batches):
            step.set_lr(0.1 if i < 5 else 0.01)
            step(x, y)
            torch.cuda.synchronize()
            snaps.append(torch.cat([p.detach().flatten() for p in model.parameters()]).cpu())
        return snaps, step.take_sums().cpu()

    a, sa = run(False)
    b, sb = run(False)
    c, sc = run(True)
    print(amp, "eager vs eager per step:", [f"{(x - y).abs().max():.2e}" for x, y in zip(a, b)])
    print(amp, "eager vs graph per step:", [f"{(x - y).abs().max():.2e}" for x, y in zip(a, c)])
    print(amp, "sums", sa.tolist(), sb.tolist(), sc.tolist())
