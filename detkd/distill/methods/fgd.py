"""Focal and global distillation (Yang et al., "Focal and Global Knowledge Distillation for
Detectors", CVPR 2022; spec docs/methods.md, section 3):
L = sum_levels alpha L_fg + beta L_bg + gamma L_at + lambda L_global, the fg/bg masks from the
ground-truth boxes in the teacher's frame."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from detkd.config.fields import option
from detkd.distill.methods.base import BuildContext, DistillRecord, resolve_levels
from detkd.distill.methods.features import LevelMethod
from detkd.losses.feature import FGD, match_size
from detkd.modeling.adapters import module_key


@dataclass
class FGDConfig:
    """Focal and global distillation, ``distill.fgd``: foreground/background masked imitation
    weighted by teacher attention, attention transfer and GcBlock global relation. Defaults by the
    student's family, the authors' configs (yzd-v/FGD): Faster R-CNN (and SSDlite, unvalidated)
    faster_rcnn_r101 -> r50 on every map but "pool"; RetinaNet fgd_retina_r101_fpn_2x_distill_retina_r50
    (T 0.5, alpha 1e-3, beta 5e-4, gamma 5e-4, lambda 5e-6) and FCOS fgd_fcos_r101_distill_fcos_r50
    (T 0.8, alpha 1.6e-3, beta 8e-4, gamma 8e-4, lambda 8e-6), on all five levels."""

    temperature: float = option(0.5, gt=0)
    alpha: float = option(5e-5, ge=0, weight=True)  # foreground
    beta: float = option(2.5e-5, ge=0, weight=True)  # background
    gamma: float = option(5e-5, ge=0, weight=True)  # attention
    lambda_global: float = option(5e-7, ge=0, weight=True)  # global (GcBlock) relation (the paper's lambda)
    levels: Optional[list[str]] = option(None, nonempty=True)  # None: every map but "pool" (P2-P5; P3-P7)


class FGDMethod(LevelMethod):
    """One :class:`detkd.losses.feature.FGD` (alignment conv + two GcBlocks) per level; the
    weights are inside the loss. Logs ``raw_fgd_{fg,bg,at,global}`` summed over levels."""

    config = FGDConfig
    family_defaults = {
        "retinanet": {"temperature": 0.5, "alpha": 1e-3, "beta": 5e-4, "gamma": 5e-4, "lambda_global": 5e-6},
        "fcos": {"temperature": 0.8, "alpha": 1.6e-3, "beta": 8e-4, "gamma": 8e-4, "lambda_global": 8e-6},
    }

    @classmethod
    def build(cls, section: FGDConfig, ctx: BuildContext) -> Optional["FGDMethod"]:
        if section.alpha == section.beta == section.gamma == section.lambda_global == 0:
            return None
        method = cls(resolve_levels(ctx.name, section.levels, ctx, skip=("pool",)), 1.0)
        for p in method.pairs:
            method.per_level[module_key(p.student)] = FGD(
                p.student_channels, p.teacher_channels, temperature=section.temperature, alpha=section.alpha,
                beta=section.beta, gamma=section.gamma, lambda_=section.lambda_global)
        return method

    def forward(self, rec: DistillRecord) -> dict[str, Tensor]:
        total, parts = None, {}
        for pair in self.pairs:
            t = rec.teacher_features[pair.teacher]
            s = match_size(rec.features[pair.student], t.shape[-2:])
            value, level_parts = self.level_module(pair)(s, t, rec.teacher_boxes, rec.teacher_batch_shape)
            total = value if total is None else total + value
            for k, v in level_parts.items():
                parts[k] = parts.get(k, 0) + v.detach()
        self.stats = {f"raw_{self.name}": total.detach(), **{f"raw_{self.name}_{k}": v for k, v in parts.items()}}
        return {f"loss_{self.name}": total}

