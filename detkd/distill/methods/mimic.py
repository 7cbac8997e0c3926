"""Mimic: plain feature imitation, the per-level mean squared error between the (aligned)
student FPN map and the teacher's (the full-map L2 of Li et al., "Mimicking Very Efficient
Network for Object Detection", CVPR 2017, without their proposal sampling):
L = weight * sum_levels mean((align(S) - T)^2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from detkd.config.fields import option
from detkd.distill.methods.base import BuildContext, resolve_levels
from detkd.distill.methods.features import LevelMethod
from detkd.losses.feature import align_conv
from detkd.modeling.adapters import module_key


@dataclass
class MimicConfig:
    """Mimic, ``distill.mimic``: L = weight * sum_levels mean((align(S) - T)^2), every level."""

    weight: float = option(1.0, ge=0, weight=True)
    levels: Optional[list[str]] = option(None, nonempty=True)  # None: every level, "pool" included


class MimicMethod(LevelMethod):
    """A 1x1 alignment conv where the widths differ; the teacher map is detached."""

    config = MimicConfig

    @classmethod
    def build(cls, section: MimicConfig, ctx: BuildContext) -> Optional["MimicMethod"]:
        if section.weight == 0:
            return None
        method = cls(resolve_levels(ctx.name, section.levels, ctx), section.weight)
        for p in method.pairs:
            method.per_level[module_key(p.student)] = align_conv(p.student_channels, p.teacher_channels)
        return method

    def level_loss(self, pair, s: Tensor, t: Tensor, rec) -> Tensor:
        return F.mse_loss(self.level_module(pair)(s), t.detach())
