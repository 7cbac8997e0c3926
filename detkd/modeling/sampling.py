"""Per-image seeded positive/negative sampling for the RPN and RoI heads.

torchvision's ``BalancedPositiveNegativeSampler`` draws from the global RNG, so which
anchors and proposals an image contributes depends on the images processed before it in
the same process. Under data parallelism that changes with the number of processes: image
3 of a global batch of 4 is the 4th image of one process's draw, or the 2nd of rank 1's.
:class:`KeyedSampler` instead seeds one generator per image from a key the trainer sets
before each forward (run seed, epoch, image id), so an image's sampled rows are the same
whatever the batch split, and 1-process and N-process runs follow the same trajectory.
With no keys set it is torchvision's sampler, unchanged.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

_MASK = (1 << 63) - 1


def sample_key(seed: int, epoch: int, image_id: int) -> int:
    """A 63-bit key for one image in one epoch of one seeded run."""
    return ((seed * 1_000_003 + epoch) * 1_000_000_007 + image_id) & _MASK


class KeyedSampler(BalancedPositiveNegativeSampler):
    """``BalancedPositiveNegativeSampler`` with the per-image randomness taken from
    ``torch.Generator(key_i, stream)`` when ``keys`` is set (one key per image)."""

    def __init__(self, batch_size_per_image: int, positive_fraction: float, stream: int) -> None:
        super().__init__(batch_size_per_image, positive_fraction)
        self.stream = stream  # RPN and RoI draws of the same image are independent
        self.keys: Optional[list[int]] = None

    def __call__(self, matched_idxs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        if self.keys is None:
            return super().__call__(matched_idxs)
        if len(self.keys) != len(matched_idxs):
            raise RuntimeError(f"KeyedSampler: {len(self.keys)} keys for {len(matched_idxs)} images")
        pos_masks, neg_masks = [], []
        for matched, key in zip(matched_idxs, self.keys):
            positive = torch.where(matched >= 1)[0]
            negative = torch.where(matched == 0)[0]
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            g = torch.Generator().manual_seed((key * 31 + self.stream) & _MASK)
            # Drawn on the CPU generator (device-independent numbers), indices moved over.
            perm_pos = torch.randperm(positive.numel(), generator=g)[:num_pos].to(positive.device)
            perm_neg = torch.randperm(negative.numel(), generator=g)[:num_neg].to(negative.device)
            pos_mask = torch.zeros_like(matched, dtype=torch.uint8)
            neg_mask = torch.zeros_like(matched, dtype=torch.uint8)
            pos_mask[positive[perm_pos]] = 1
            neg_mask[negative[perm_neg]] = 1
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        return pos_masks, neg_masks


def install_keyed_samplers(model: nn.Module) -> nn.Module:
    """Replace the RPN's and RoI heads' samplers of a torchvision detector (same sizes)."""
    for stream, part in enumerate((model.rpn, model.roi_heads), start=1):
        old = part.fg_bg_sampler
        part.fg_bg_sampler = KeyedSampler(old.batch_size_per_image, old.positive_fraction, stream)
    return model


def _sampling_parts(model: nn.Module) -> list[nn.Module]:
    """The parts of ``model`` that sample (a Faster R-CNN's RPN and RoI heads; none for the
    one-stage families, whose losses use every anchor)."""
    return [part for part in (getattr(model, "rpn", None), getattr(model, "roi_heads", None))
            if part is not None and hasattr(part, "fg_bg_sampler")]


def set_sampling_keys(model: nn.Module, keys: Optional[Sequence[int]]) -> None:
    """Set (or clear, with None) the per-image keys for the next training forward (nothing
    to set on a model without keyed samplers)."""
    for part in _sampling_parts(model):
        sampler = part.fg_bg_sampler
        if isinstance(sampler, KeyedSampler):
            sampler.keys = None if keys is None else list(keys)


def sampling_keys(model: nn.Module) -> Optional[list[int]]:
    """The per-image keys set on ``model``'s keyed samplers (:func:`set_sampling_keys`), or None."""
    for part in _sampling_parts(model):
        sampler = part.fg_bg_sampler
        if isinstance(sampler, KeyedSampler) and sampler.keys is not None:
            return list(sampler.keys)
    return None


def plain_samplers(model: nn.Module) -> nn.Module:
    """Put torchvision's own sampler of the same sizes back in place of every KeyedSampler
    (a training-only part that an exported model must not carry)."""
    for part in _sampling_parts(model):
        old = part.fg_bg_sampler
        if isinstance(old, KeyedSampler):
            part.fg_bg_sampler = BalancedPositiveNegativeSampler(old.batch_size_per_image, old.positive_fraction)
    return model
