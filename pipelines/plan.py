"""The per-epoch, per-rank sample plan every backend follows: `EpochPlan` turns (n, batch size,
rank, world size, seed, epoch, start) into the batches one rank reads; `PlannedLoader`, the base
of every backend's loader, owns it with the loader's request (len() and set_epoch).

Two train orders (data.cache, pipelines/cache.py): "ram" shuffles the whole split at once (random
reads, fine while the records sit in the page cache); "stream" shuffles in bounded windows over
storage blocks (webdataset shards, FFCV pages) visited in a random order (`windowed_order`), so
the data in flight is a few blocks, whatever the records' size. Either way all ranks share one
order of the epoch and deal it round-robin: disjoint, equal, covering."""
from __future__ import annotations

import numpy as np

from pipelines.ops import epoch_permutation, mix_seed
from pipelines.request import LoaderError, LoaderRequest

STREAM_WINDOW = 4096  # stream order: samples shuffled together (DALI: its reader's buffer)


def windowed_order(blocks: np.ndarray, seed: int, epoch: int,
                   window: int = STREAM_WINDOW) -> np.ndarray:
    """A shuffle of positions 0..n-1 that reads storage in bounded windows: blocks[i] is the
    storage block (shard, page) of position i; the blocks are visited in a random order, each
    block's samples in a random order, then every `window` consecutive positions of that stream
    are shuffled together: each window's samples come from at most window / (block size) + 1
    blocks. Like FFCV's QUASI_RANDOM, but a function of (seed, epoch) alone, so every rank
    computes the same order and resume lands on the same batch."""
    blocks = np.asarray(blocks)
    rng = np.random.default_rng(mix_seed(seed, epoch, 0x5742))
    names, block = np.unique(blocks, return_inverse=True)
    visit = np.empty(len(names), dtype=np.int64)
    visit[rng.permutation(len(names))] = np.arange(len(names))
    stream = np.lexsort((rng.random(len(blocks)), visit[block]))
    window_key = np.arange(len(blocks)) // max(1, window) + rng.random(len(blocks))
    return stream[np.argsort(window_key, kind="stable")]


def shard_indices(n: int, rank: int, world_size: int, seed: int, epoch: int, shuffle: bool,
                  drop_last: bool, batch_size: int, blocks: np.ndarray | None = None
                  ) -> np.ndarray:
    """Positions 0..n-1 that `rank` reads in `epoch`, in order.

    shuffle/drop_last (train): one permutation of (seed, epoch) shared by all ranks, cut to a
    multiple of world_size * batch_size, dealt round-robin, so every rank gets the same number of
    full batches and the ranks' samples are disjoint. Otherwise (eval): contiguous, in order,
    nothing dropped; the shares differ by at most one sample and cover 0..n-1. With `blocks`
    (stream mode), the shuffle is windowed_order(blocks, ...).
    """
    if n < 0 or batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard_indices(n={n}, rank={rank}, world_size={world_size}, "
                         f"batch_size={batch_size}): invalid")
    if not shuffle:
        order = np.arange(n)
    elif blocks is not None:
        order = windowed_order(blocks, seed, epoch)
    else:
        order = epoch_permutation(n, seed, epoch).numpy()
    if drop_last:
        per_rank = (n // world_size) // batch_size * batch_size
        return order[:per_rank * world_size][rank::world_size]
    return np.array_split(order, world_size)[rank]


class EpochPlan:
    """The batches of one rank: `set_epoch(epoch, start)` picks the epoch's order and the batch
    to begin with (resume); `batches()` yields (batch number, sample positions). `start` applies
    to the next pass only; the epoch stays until set_epoch is called again."""

    def __init__(self, n: int, batch_size: int, rank: int, world_size: int, seed: int,
                 shuffle: bool, drop_last: bool, blocks: np.ndarray | None = None):
        """blocks: the storage block of each position, for the stream order (None: "ram")."""
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        if blocks is not None and len(blocks) != n:
            raise ValueError(f"blocks: {len(blocks)} entries for {n} samples")
        self.blocks = blocks
        self.epoch, self.start = 0, 0
        if drop_last and n // world_size < batch_size:
            raise LoaderError(f"{n} samples over {world_size} rank(s) make no full batch of "
                              f"{batch_size}; lower data.batch_size")

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if epoch < 0 or not 0 <= start <= len(self):
            raise ValueError(f"set_epoch(epoch={epoch}, start={start}): need epoch >= 0 and "
                             f"0 <= start <= {len(self)} batches")
        self.epoch, self.start = int(epoch), int(start)

    def indices(self) -> np.ndarray:
        return shard_indices(self.n, self.rank, self.world_size, self.seed, self.epoch,
                             self.shuffle, self.drop_last, self.batch_size, self.blocks)

    def __len__(self) -> int:
        share = self.n // self.world_size + (self.rank < self.n % self.world_size)
        if self.drop_last:
            return (self.n // self.world_size) // self.batch_size
        return -(-share // self.batch_size)

    def batches(self):
        """(batch number, positions) from `start`; resets start to 0 for the following pass."""
        order, start, size = self.indices(), self.start, self.batch_size
        self.start = 0
        for number in range(start, len(self)):
            yield number, order[number * size:(number + 1) * size]


class PlannedLoader:
    """The base of every loader: its request, and the plan of its rank's batches, which gives
    len() (batches per epoch) and set_epoch(epoch, start) (the epoch's order, and the batch a
    resumed epoch begins with). A backend adds only what is its own: reading, decoding and
    augmenting, in `__iter__` over `self.plan.batches()`."""

    plan_class = EpochPlan

    def __init__(self, request: LoaderRequest, samples: int, batch_size: int | None = None,
                 blocks: np.ndarray | None = None):
        """batch_size: the request's unless the backend batches otherwise (FFCV's eval decode
        buffers). blocks: each sample's storage block (shard, page), for the stream order when
        the request streams (data.cache)."""
        self.request = request
        stream = request.cache.stream and blocks is not None
        self.plan = self.plan_class(samples, batch_size or request.batch_size, request.rank,
                                    request.world_size, request.seed, shuffle=request.train,
                                    drop_last=request.train, blocks=blocks if stream else None)

    def __len__(self) -> int:
        return len(self.plan)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.plan.set_epoch(epoch, start)

    # The request's fields, read-only, under the names the backends use.
    cfg = property(lambda self: self.request.data)
    aug = property(lambda self: self.request.aug)
    device = property(lambda self: self.request.device)
    rank = property(lambda self: self.request.rank)
    seed = property(lambda self: self.request.seed)
    train = property(lambda self: self.request.train)
    eval_mode = property(lambda self: self.request.eval_mode)
    scale = property(lambda self: self.request.scale)
