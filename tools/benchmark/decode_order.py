"""Does a decode overwrite memory that queued work still reads? The shape of the upstream
reproducer (torchvision PR #9606): tensors the size of decoded images are filled, reduced by
work queued behind a long kernel, and freed while those reductions are pending; then a batch is
decoded. A reduction that does not see its own values was overwritten.

  python -m tools.benchmark.decode_order [--rounds 50]   # on a GPU: plain vs ordered counts

"plain" decodes on the caller's stream, as the native loader did before; "ordered" follows
pipelines/decode.py's rule. On the CPU both routes decode synchronously (nothing to overwrite).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[2])

import torch  # noqa: E402
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg  # noqa: E402

from pipelines import decode  # noqa: E402

SIZE = (3, 360, 480)


def jpeg_batch(n: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [encode_jpeg(torch.randint(0, 256, SIZE, dtype=torch.uint8, generator=gen))
            for _ in range(n)]


def count_overwrites(device, route: str, rounds: int = 20, images: int = 8,
                     tensors: int = 16) -> dict:
    """Reductions that saw wrong values over `rounds` rounds, and the decoded batches' shapes."""
    device = torch.device(device)
    order = decode.ordering(device)
    data = jpeg_batch(images)
    numel = SIZE[0] * SIZE[1] * SIZE[2] // 4  # float32 tensors of a decoded image's bytes
    want = torch.arange(1, tensors + 1, dtype=torch.float32) * numel
    wrong, shapes = 0, set()
    for _ in range(rounds):
        filled = [torch.full((numel,), float(k + 1), device=device) for k in range(tensors)]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda._sleep(5_000_000)  # a few ms of queued work ahead of the reductions
        sums = [t.sum() for t in filled]
        del filled
        if route == "plain":
            out = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        else:
            out = order.hand_over(tuple(order.decode(data)), order.done())
        shapes |= {tuple(image.shape) for image in out}
        wrong += int((torch.stack(sums).cpu() != want).sum())
    return {"route": route, "device": str(device), "rounds": rounds,
            "reductions": rounds * tensors, "wrong": wrong, "shapes": sorted(shapes)}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    results = [count_overwrites(args.device, route, args.rounds) for route in ("plain",
                                                                               "ordered")]
    for r in results:
        print(json.dumps(r))
    return results


if __name__ == "__main__":
    main()
