"""A resumable, distributed-aware sampler with per-epoch seeding.

The order of epoch ``e`` is a permutation drawn from ``torch.Generator`` seeded with
``seed + e`` (the same on every rank), padded to a multiple of the world size and split
round-robin like ``DistributedSampler``. ``start`` skips the samples already consumed
in the epoch, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    def __init__(self, size: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 pad: bool = True) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pad = pad  # training pads so every rank runs the same number of steps
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and skip its first ``start`` samples (of this rank)."""
        self.epoch = epoch
        self.start = start

    def _order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        if self.pad and self.world_size > 1 and self.size % self.world_size:
            extra = self.world_size - self.size % self.world_size
            order += order[:extra]
        return order[self.rank :: self.world_size]

    def per_rank(self) -> int:
        if self.pad:
            return -(-self.size // self.world_size)
        return len(range(self.rank, self.size, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self._order()[self.start :])

    def __len__(self) -> int:
        return self.per_rank() - self.start
