"""Which samples a rank sees in an epoch, and how many batches that makes.

Order: a permutation drawn from (seed, epoch) when shuffling, identity otherwise.
Sharding: the order is cut into global batches of B x W samples and rank r takes
the r-th slice of B of each, so W ranks with batch B see at every step exactly
the samples one process with batch B x W sees (a 2-rank run can equal a
1-rank run). A last partial global batch (drop_last off) is split as evenly as
possible. Every backend (DALI through its external source, FFCV through its traversal
order, torchvision through its sampler) reads exactly this order. Shard sizes
are those of the contiguous split [floor(N r / W), floor(N (r+1) / W)). Last
partial batch: dropped when
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
        big = self.batch_size * self.world
        full = self.n // big
        parts = [perm[: full * big].reshape(full, self.world, self.batch_size)[:, self.rank]
                 .reshape(-1)]
        rest = perm[full * big:]
        if len(rest) and not self.drop_last:
            lo, hi = shard_range(len(rest), self.rank, self.world)
            parts.append(rest[lo:hi])
        return np.concatenate(parts).tolist()


class EpochLoader:
    """What every backend's loader shares: an explicit epoch and a length from
    its EpochPlan (subclasses set ``self.plan``; ``__iter__`` is theirs)."""

    epoch = 0
    skip = 0
    plan: EpochPlan
    # The recipe a loader was built with, fixed for its life: DALI's graph, FFCV's
    # compiled op and the Finisher are all made from it (build another loader for
    # another recipe).
    recipe = None

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """The next ``iter()`` yields epoch ``epoch`` from batch ``skip`` on (a
        resumed run starts mid-epoch; the batches it yields are the same ones)."""
        if not 0 <= skip <= self.plan.num_batches:
            raise ValueError(f"skip {skip} outside 0..{self.plan.num_batches}")
        self.epoch, self.skip = epoch, skip

    def epoch_order(self) -> list[int]:
        """This rank's sample order for the epoch, from batch ``skip`` on."""
        return self.plan.order(self.epoch)[self.skip * self.plan.batch_size:]

    def __len__(self) -> int:
        """Batches in a whole epoch (a skip makes the next epoch shorter by ``skip``)."""
        return self.plan.num_batches
