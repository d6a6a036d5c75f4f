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
"""
from __future__ import annotations

import contextlib
import threading

import torch
from torchvision.io import ImageReadMode, decode_jpeg


def drain_then_decode(data: list[torch.Tensor], device: torch.device,
                      stream: torch.cuda.Stream) -> list[torch.Tensor]:
    """Decode on `stream` after waiting for everything queued on it, so that no block the
    decoder is given can still be read by a queued kernel."""
    stream.synchronize()
    with torch.cuda.stream(stream):
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


class CudaOrder:
    """On CUDA: one stream per loader thread (created on first use); decodes follow the rule
    above; a finished batch reaches the consumer's stream through an event."""

    def __init__(self, device: torch.device):
        self.device = device
        self._local = threading.local()

    def stream(self) -> torch.cuda.Stream:
        stream = getattr(self._local, "stream", None)
        if stream is None:
            # high priority: a batch's few small kernels go ahead of the training step's
            stream = self._local.stream = torch.cuda.Stream(self.device, priority=-1)
        return stream

    def decode(self, data: list[torch.Tensor]) -> list[torch.Tensor]:
        return drain_then_decode(data, self.device, self.stream())

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
        return decode_jpeg(data, mode=ImageReadMode.RGB)

    @staticmethod
    def context():
        return contextlib.nullcontext()

    @staticmethod
    def done() -> None:
        return None

    @staticmethod
    def hand_over(tensors: tuple[torch.Tensor, ...], event: None):
        return tensors


def ordering(device: torch.device) -> CudaOrder | HostOrder:
    return CudaOrder(device) if device.type == "cuda" else HostOrder()
