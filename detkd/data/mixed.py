"""Labeled and unlabeled images in every training batch (``data.unlabeled``).

:class:`MixedDataset` is the labeled set followed by the unlabeled one (items ``len(labeled)``
onwards are unlabeled: no boxes, ``target["unlabeled"]`` True); :class:`MixedSampler` makes each
batch of ``batch_size`` indices ``n_l`` labeled ones then ``n_u`` unlabeled ones. An epoch is one
pass over the labeled set; the unlabeled images come from an endless stream of permutations, and
batch ``b`` of epoch ``e`` takes its unlabeled images from that stream at a position computed
from ``(e, b)`` alone: a resumed run (``set_epoch(e, start)``) sees exactly the batches an
uninterrupted one would, with both sets' positions, on any number of processes.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import Sampler

from detkd.data.base import Delegating, DetectionDataset

__all__ = ["MixedDataset", "MixedSampler", "batch_split"]


def batch_split(batch_size: int, share: float | None, labeled: int, unlabeled: int) -> tuple[int, int]:
    """``(n_l, n_u)`` images per batch: ``share`` of the batch unlabeled (None: the sets' size
    ratio), at least one of each."""
    if batch_size < 2:
        raise ValueError("a batch that mixes labeled and unlabeled images needs train.batch_size >= 2")
    share = unlabeled / (labeled + unlabeled) if share is None else share
    n_u = min(batch_size - 1, max(1, round(share * batch_size)))
    return batch_size - n_u, n_u


class MixedDataset(Delegating):
    """The labeled set then the unlabeled one; everything but the items is the labeled set's."""

    def __init__(self, labeled: DetectionDataset, unlabeled: DetectionDataset) -> None:
        self.labeled, self.unlabeled = labeled, unlabeled

    def __len__(self) -> int:
        return len(self.labeled) + len(self.unlabeled)

    def __getitem__(self, idx: int) -> Any:
        if idx < len(self.labeled):
            image, target = self.labeled[idx]
            target["unlabeled"] = torch.tensor(False)
            return image, target
        image, target = self.unlabeled[idx - len(self.labeled)]
        target["unlabeled"] = torch.tensor(True)
        return image, target

    def set_epoch(self, epoch: int) -> None:
        self.labeled.set_epoch(epoch)
        self.unlabeled.set_epoch(epoch)

    @property
    def inner(self) -> DetectionDataset:
        return self.labeled

    def summary(self) -> str:
        return f"{self.labeled.summary()}; unlabeled: {self.unlabeled.summary()}"


class MixedSampler(Sampler[int]):
    """Indices into a :class:`MixedDataset`, ``n_l`` labeled then ``n_u`` unlabeled per batch
    (see the module docs); the interface of :class:`~detkd.data.sampler.ResumableSampler`."""

    def __init__(self, labeled: int, unlabeled: int, n_l: int, n_u: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        self.labeled, self.unlabeled, self.n_l, self.n_u = labeled, unlabeled, n_l, n_u
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch and skip its first ``start`` samples (of this rank)."""
        self.epoch, self.start = epoch, start

    def batches(self) -> int:
        """Batches per epoch and rank: the labeled set once, padded to whole batches on every rank."""
        return -(-self.labeled // (self.n_l * self.world_size))

    def per_rank(self) -> int:
        return self.batches() * (self.n_l + self.n_u)

    def _permutation(self, salt: int, k: int, size: int) -> list[int]:
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + salt * 7919 + k)
        return torch.randperm(size, generator=g).tolist()

    def _unlabeled_at(self, positions: range) -> list[int]:
        """Items of the endless unlabeled stream (permutation k covers positions k*U .. (k+1)*U - 1)."""
        out, cache = [], {}
        for pos in positions:
            k = pos // self.unlabeled
            if k not in cache:
                cache[k] = self._permutation(1, k, self.unlabeled)
            out.append(self.labeled + cache[k][pos % self.unlabeled])
        return out

    def _order(self) -> list[int]:
        labeled = self._permutation(0, self.epoch, self.labeled)
        need = self.batches() * self.n_l * self.world_size
        labeled = (labeled * (-(-need // self.labeled)))[:need]  # padded by wrapping, as DistributedSampler
        order = []
        per_batch_u = self.n_u * self.world_size
        for b in range(self.batches()):
            first = b * self.n_l * self.world_size + self.rank * self.n_l
            order += labeled[first:first + self.n_l]
            at = ((self.epoch * self.batches() + b) * per_batch_u) + self.rank * self.n_u
            order += self._unlabeled_at(range(at, at + self.n_u))
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self._order()[self.start:])

    def __len__(self) -> int:
        return self.per_rank() - self.start
