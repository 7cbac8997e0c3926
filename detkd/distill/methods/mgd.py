"""Masked generative distillation (Yang et al., "Masked Generative Distillation", ECCV 2022;
spec docs/methods.md, section 3): L = sum_levels alpha * sum (G(align(S) * M) - T)^2 / N, with a
random spatial mask M (ratio lambda) drawn per image from its key, so a resumed or sharded
run draws the same masks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from detkd.config.fields import option
from detkd.distill.methods.base import BuildContext, resolve_levels
from detkd.distill.methods.features import LevelMethod
from detkd.losses.feature import MGD
from detkd.modeling.adapters import module_key

_MASK = (1 << 62) - 1


@dataclass
class MGDConfig:
    """Masked generative distillation, ``distill.mgd``: a generator rebuilds the teacher map
    from a randomly masked student map. alpha 2e-5, lambda 0.65: the authors' module defaults and
    RetinaNet config, MMRazor's mgd_fpn_retina (no public Faster R-CNN R101 -> R50 MGD config
    exists; docs/methods.md, section 3.3)."""

    alpha: float = option(2e-5, ge=0, weight=True)
    lambda_mask: float = option(0.65, ge=0, le=1)
    levels: Optional[list[str]] = option(None, nonempty=True)  # None: every level, "pool" included


class MGDMethod(LevelMethod):
    """One :class:`detkd.losses.feature.MGD` (alignment conv + generator) per level; alpha is
    inside the loss, so the method's outer weight is 1."""

    config = MGDConfig
    needs_keys = True

    @classmethod
    def build(cls, section: MGDConfig, ctx: BuildContext) -> Optional["MGDMethod"]:
        if section.alpha == 0:
            return None
        method = cls(resolve_levels(ctx.name, section.levels, ctx), 1.0)
        for p in method.pairs:
            method.per_level[module_key(p.student)] = MGD(p.student_channels, p.teacher_channels,
                                                          alpha=section.alpha, lambda_mask=section.lambda_mask)
        return method

    def level_loss(self, pair, s: Tensor, t: Tensor, rec) -> Tensor:
        index = self.pairs.index(pair)
        keys = [(key * 16 + index) & _MASK for key in rec.keys]  # another mask per level
        return self.level_module(pair)(s, t, keys)
