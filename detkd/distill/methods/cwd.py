"""Channel-wise distillation (Shu et al., "Channel-wise Knowledge Distillation for Dense
Prediction", ICCV 2021; spec docs/methods.md, section 3):
L = weight * sum_levels tau^2 / (N C) sum_{n,c} KL(softmax_hw(T / tau) || softmax_hw(S / tau))."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from detkd.config.fields import option
from detkd.distill.methods.base import BuildContext, resolve_levels
from detkd.distill.methods.features import LevelMethod
from detkd.losses.feature import align_conv, cwd_loss
from detkd.modeling.adapters import module_key


@dataclass
class CWDConfig:
    """Channel-wise distillation, ``distill.cwd``: KL between per-channel spatial softmaxes.
    Defaults tau 1, weight 10, all levels: MMRazor's cwd_fpn_frcnn config."""

    weight: float = option(10.0, ge=0, weight=True)
    temperature: float = option(1.0, gt=0)
    levels: Optional[list[str]] = option(None, nonempty=True)  # None: every level, "pool" included


class CWDMethod(LevelMethod):
    """A 1x1 alignment conv where the widths differ (MMRazor's connector for CWD)."""

    config = CWDConfig

    def __init__(self, pairs, weight: float, temperature: float) -> None:
        super().__init__(pairs, weight)
        self.temperature = float(temperature)

    @classmethod
    def build(cls, section: CWDConfig, ctx: BuildContext) -> Optional["CWDMethod"]:
        if section.weight == 0:
            return None
        method = cls(resolve_levels(ctx.name, section.levels, ctx), section.weight, section.temperature)
        for p in method.pairs:
            method.per_level[module_key(p.student)] = align_conv(p.student_channels, p.teacher_channels)
        return method

    def level_loss(self, pair, s: Tensor, t: Tensor, rec) -> Tensor:
        return cwd_loss(self.level_module(pair)(s), t, self.temperature)
