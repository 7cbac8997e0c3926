"""Channel-wise distillation (Shu et al., "Channel-wise Knowledge Distillation for Dense
Prediction", ICCV 2021; spec docs/methods.md, section 3):
L = weight * sum_levels tau^2 / (N C) sum_{n,c} KL(softmax_hw(T / tau) || softmax_hw(S / tau))."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from detkd.config.schema import CWDConfig
from detkd.distill.methods.base import BuildContext, resolve_levels
from detkd.distill.methods.features import LevelMethod
from detkd.losses.feature import align_conv, cwd_loss
from detkd.modeling.adapters import module_key


class CWDMethod(LevelMethod):
    """A 1x1 alignment conv where the widths differ (MMRazor's connector for CWD)."""

    name = "cwd"

    def __init__(self, pairs, weight: float, temperature: float) -> None:
        super().__init__(pairs, weight)
        self.temperature = float(temperature)

    @classmethod
    def build(cls, section: CWDConfig, ctx: BuildContext) -> Optional["CWDMethod"]:
        if section.weight == 0:
            return None
        method = cls(resolve_levels("cwd", section.levels, ctx), section.weight, section.temperature)
        for p in method.pairs:
            method.per_level[module_key(p.student)] = align_conv(p.student_channels, p.teacher_channels)
        return method

    def level_loss(self, pair, s: Tensor, t: Tensor, rec) -> Tensor:
        return cwd_loss(self.level_module(pair)(s), t, self.temperature)
