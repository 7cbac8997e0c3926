"""PKD (Cao et al., "PKD: General Distillation Framework for Object Detectors via Pearson
Correlation Coefficient", NeurIPS 2022; spec docs/methods.md, section 3):
L = weight * sum_levels mean((z(S) - z(T))^2) / 2, z the per-channel standardization."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from detkd.config.fields import option
from detkd.distill.methods.base import BuildContext, resolve_levels
from detkd.distill.methods.features import LevelMethod
from detkd.losses.feature import align_conv, pkd_loss
from detkd.modeling.adapters import module_key


@dataclass
class PKDConfig:
    """PKD, ``distill.pkd``: L = weight * sum_levels mean((z(S) - z(T))^2) / 2. Defaults by the
    student's family: weight 6 (Faster R-CNN, SSDlite: MMRazor's pkd_fpn_faster-rcnn_r101_faster-rcnn_r50
    config) or 10 (RetinaNet, FCOS: pkd_fpn_retina_x101_retina_r50_2x_coco); levels: every student map
    but the FPN's last extra one, "pool" (Faster R-CNN: P2-P5) or "p7" (RetinaNet, FCOS: P3-P6)."""

    weight: float = option(6.0, ge=0, weight=True)
    levels: Optional[list[str]] = option(None, nonempty=True)  # student maps; None: all but "pool"/"p7"


class PKDMethod(LevelMethod):
    """A 1x1 alignment conv only where the widths differ (the normalization removes scale)."""

    config = PKDConfig
    family_defaults = {"retinanet": {"weight": 10.0}, "fcos": {"weight": 10.0}}

    @classmethod
    def build(cls, section: PKDConfig, ctx: BuildContext) -> Optional["PKDMethod"]:
        if section.weight == 0:
            return None
        method = cls(resolve_levels(ctx.name, section.levels, ctx, skip=("pool", "p7")), section.weight)
        for p in method.pairs:
            method.per_level[module_key(p.student)] = align_conv(p.student_channels, p.teacher_channels)
        return method

    def level_loss(self, pair, s: Tensor, t: Tensor, rec) -> Tensor:
        return pkd_loss(self.level_module(pair)(s), t)
