"""JPEG decoding for the native backend, and the ordering rule that makes nvJPEG safe.

On CUDA, torchvision's batched decoder allocates its outputs on the caller's current stream and
nvJPEG (its hardware engine on A100/H100/H200) writes them without waiting for work already
queued on that stream. PyTorch's caching allocator hands a stream any block freed on it, even one
that queued kernels will still read: so a decode issued while training kernels are queued can
overwrite their inputs, and the training step reads garbage (NaN, seen on an H200; torchvision
PR #9606 and torchcodec PR #1634 reproduce it). The rule, in `drain_then_decode`: decode on a
stream of the loader's own, drained first (only the loader's own earlier work waits), and hand
the results to the training stream through an event plus `record_stream`, so the allocator never
gives their blocks to a later decode while training still reads them.

torchvision has one nvJPEG decoder per process behind a lock, so the loader's threads take turns
on it and its rate caps the loader's. As DALI does (`hw_decoder_load`, default 0.65), a share of
each batch goes to the GPU decoder and the rest is decoded on the CPU by the loader thread
(libjpeg-turbo, without the GIL), then moved to the GPU in one copy: `split_decode`.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import torch
from torchvision.io import ImageReadMode, decode_jpeg


def drain_then_decode(data: list[torch.Tensor], device: torch.device,
                      stream: torch.cuda.Stream) -> list[torch.Tensor]:
    """Decode on `stream` after waiting for everything queued on it, so that no block the
    decoder is given can still be read by a queued kernel."""
    stream.synchronize()
    with torch.cuda.stream(stream):
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def host_decode(data: list[torch.Tensor]) -> list[torch.Tensor]:
    """JPEGs decoded on the CPU: (3, H, W) uint8 each."""
    return decode_jpeg(data, mode=ImageReadMode.RGB) if data else []


def upload(images: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """CPU images onto `device` in one host-to-device copy: packed into one buffer (pinned on
    CUDA, so the copy is asynchronous), moved, and viewed back in their shapes."""
    if not images:
        return []
    sizes = [image.numel() for image in images]
    packed = torch.empty(sum(sizes), dtype=torch.uint8, pin_memory=device.type == "cuda")
    torch.cat([image.reshape(-1) for image in images], out=packed)
    moved = packed.to(device, non_blocking=True)
    return [part.view(image.shape) for part, image in zip(moved.split(sizes), images)]


def device_count(share: float, n: int) -> int:
    """How many of n JPEGs the GPU decoder takes at `share` (round half up)."""
    return min(n, int(share * n + 0.5))


def split_decode(data: list[torch.Tensor], share: float,
                 on_device: Callable[[list], list], on_host: Callable[[list], list]) -> list:
    """The first device_count(share, len(data)) JPEGs through `on_device`, the rest through
    `on_host` (decode on the CPU and move): the images in the order of `data`."""
    n = device_count(share, len(data))
    return [*(on_device(data[:n]) if n else []), *(on_host(data[n:]) if n < len(data) else [])]


class CudaOrder:
    """On CUDA: one stream per loader thread (created on first use); decodes follow the rule
    above, `share` of each batch on the GPU decoder; a finished batch reaches the consumer's
    stream through an event."""

    def __init__(self, device: torch.device, share: float = 1.0):
        self.device, self.share = device, share
        self._local = threading.local()

    def stream(self) -> torch.cuda.Stream:
        stream = getattr(self._local, "stream", None)
        if stream is None:
            # high priority: a batch's few small kernels go ahead of the training step's
            stream = self._local.stream = torch.cuda.Stream(self.device, priority=-1)
        return stream

    def decode(self, data: list[torch.Tensor]) -> list[torch.Tensor]:
        return split_decode(data, self.share,
                            lambda part: drain_then_decode(part, self.device, self.stream()),
                            self._decode_on_host)

    def _decode_on_host(self, data: list[torch.Tensor]) -> list[torch.Tensor]:
        images = host_decode(data)
        with self.context():  # the copy is queued on this thread's stream, before the augment
            return upload(images, self.device)

    def context(self):
        """The loader thread's work after the decode runs on its stream too."""
        return torch.cuda.stream(self.stream())

    def done(self) -> torch.cuda.Event:
        """An event marking the end of this thread's work so far (record after the batch)."""
        event = torch.cuda.Event()
        event.record(self.stream())
        return event

    @staticmethod
    def hand_over(tensors: tuple[torch.Tensor, ...], event: torch.cuda.Event):
        """The current stream waits for `event`, and the allocator learns that the tensors are
        used there (their blocks are not reused until that use is done)."""
        current = torch.cuda.current_stream(tensors[0].device)
        current.wait_event(event)
        for tensor in tensors:
            tensor.record_stream(current)
        return tensors


class HostOrder:
    """On the CPU: the same calls, nothing to order (the work is done when they return)."""

    @staticmethod
    def decode(data: list[torch.Tensor]) -> list[torch.Tensor]:
        return host_decode(data)

    @staticmethod
    def context():
        return contextlib.nullcontext()

    @staticmethod
    def done() -> None:
        return None

    @staticmethod
    def hand_over(tensors: tuple[torch.Tensor, ...], event: None):
        return tensors


def ordering(device: torch.device, share: float = 1.0) -> CudaOrder | HostOrder:
    """The decode route of a device: on CUDA `share` of each batch on the GPU decoder."""
    return CudaOrder(device, share) if device.type == "cuda" else HostOrder()
