"""Which samples a rank sees in an epoch, and how many batches that makes.

Order: a permutation drawn from (seed, epoch) when shuffling, identity otherwise.
Sharding: rank r of W takes the contiguous slice [floor(N r / W), floor(N (r+1) / W))
of that order, the same split DALI's readers make (shard sizes differ by at most
one; no sample is padded in or repeated). Last partial batch: dropped when
``drop_last`` (training default: every step sees a full batch), else yielded
smaller. Epochs are explicit: the loop calls set_epoch(e); nothing carries over.
"""

from __future__ import annotations

import numpy as np


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    return n * rank // world, n * (rank + 1) // world


class EpochPlan:
    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool, drop_last: bool,
                 rank: int = 0, world: int = 1):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world size {world}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.shuffle, self.drop_last, self.rank, self.world = shuffle, drop_last, rank, world
        lo, hi = shard_range(n, rank, world)
        self.shard_size = hi - lo
        if self.shard_size == 0 or (drop_last and self.shard_size < batch_size):
            raise ValueError(f"shard {rank}/{world} has {self.shard_size} samples, fewer than "
                             f"one batch of {batch_size}")

    @property
    def num_batches(self) -> int:
        if self.drop_last:
            # From the smallest shard (n // world), so that every DDP rank runs the
            # same number of steps; a larger shard drops its one extra sample.
            return (self.n // self.world) // self.batch_size
        return -(-self.shard_size // self.batch_size)

    def order(self, epoch: int) -> list[int]:
        if self.shuffle:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        else:
            perm = np.arange(self.n)
        lo, hi = shard_range(self.n, self.rank, self.world)
        mine = perm[lo:hi]
        if self.drop_last:
            mine = mine[: self.num_batches * self.batch_size]
        return mine.tolist()


class EpochLoader:
    """What every backend's loader shares: an explicit epoch and a length from
    its EpochPlan (subclasses set ``self.plan``; ``__iter__`` is theirs)."""

    epoch = 0
    plan: EpochPlan

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.plan.num_batches
