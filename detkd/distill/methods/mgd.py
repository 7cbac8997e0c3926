"""Masked generative distillation (Yang et al., "Masked Generative Distillation", ECCV 2022;
spec docs/methods.md, section 3): L = sum_levels alpha * sum (G(align(S) * M) - T)^2 / N, with a
random spatial mask M (ratio lambda) drawn per image from its key, so a resumed or sharded
run draws the same masks."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from detkd.config.schema import MGDConfig
from detkd.distill.methods.base import BuildContext, resolve_levels
from detkd.distill.methods.features import LevelMethod
from detkd.losses.feature import MGD
from detkd.modeling.adapters import module_key

_MASK = (1 << 62) - 1


class MGDMethod(LevelMethod):
    """One :class:`detkd.losses.feature.MGD` (alignment conv + generator) per level; alpha is
    inside the loss, so the method's outer weight is 1."""

    name = "mgd"
    needs_keys = True

    @classmethod
    def build(cls, section: MGDConfig, ctx: BuildContext) -> Optional["MGDMethod"]:
        if section.alpha == 0:
            return None
        method = cls(resolve_levels("mgd", section.levels, ctx), 1.0)
        for p in method.pairs:
            method.per_level[module_key(p.student)] = MGD(p.student_channels, p.teacher_channels,
                                                          alpha=section.alpha, lambda_mask=section.lambda_mask)
        return method

    def level_loss(self, pair, s: Tensor, t: Tensor, rec) -> Tensor:
        index = self.pairs.index(pair)
        keys = [(key * 16 + index) & _MASK for key in rec.keys]  # another mask per level
        return self.level_module(pair)(s, t, keys)
