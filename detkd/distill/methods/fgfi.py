"""Fine-grained feature imitation (Wang et al., "Distilling Object Detectors with
Fine-grained Feature Imitation", CVPR 2019; spec docs/methods.md, sections 3 and 4):
L = weight * sum_levels sum I (adapt(S) - T)^2 / (2 N_p), I the locations whose anchors
overlap a ground-truth box by more than psi times that box's best anchor IoU.

The mask comes from the student's own anchors on its own grid (teacher anchors are never used):
Faster R-CNN's RPN anchors, RetinaNet's anchors, SSD's default boxes; FCOS is anchor-free, so
there I marks the points its own assignment makes foreground (psi unused)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkd.config.fields import option
from detkd.distill.methods.base import BuildContext, DistillRecord, resolve_levels
from detkd.distill.methods.features import LevelMethod
from detkd.errors import DetkdError
from detkd.losses.feature import fgfi_masks, masked_imitation_loss, match_size
from detkd.modeling.adapters import module_key


@dataclass
class FGFIConfig:
    """Fine-grained feature imitation, ``distill.fgfi``: imitation on the locations whose
    anchors overlap a ground-truth box (IoU > psi * the box's best anchor IoU). psi 0.5 and
    weight 0.01: the paper (Sec. 3.1, 4)."""

    weight: float = option(0.01, ge=0, weight=True)
    psi: float = option(0.5, ge=0, le=1)
    levels: Optional[list[str]] = option(None, nonempty=True)  # None: every level (each has anchors)


class FGFIMethod(LevelMethod):
    """A 3x3 adaptation conv per level (the paper's adaptation layer, always present; no
    ReLU after it here, since FPN outputs, unlike the paper's backbone map, can be negative).
    The imitation mask comes from the student's anchors and ground truth, on the student's
    grid (resized, nearest, to the teacher's when the teacher runs at a larger input size)."""

    config = FGFIConfig

    def __init__(self, pairs, weight: float, psi: float, level_index: dict[str, int], points: bool = False) -> None:
        super().__init__(pairs, weight)
        self.psi = float(psi)
        self.level_index = level_index  # student level -> position among the student's maps
        self.points = points  # anchor-free student (FCOS): I = its foreground points

    @classmethod
    def build(cls, section: FGFIConfig, ctx: BuildContext) -> Optional["FGFIMethod"]:
        if section.weight == 0:
            return None
        points = ctx.student_family == "fcos"
        if not points:
            owner = ctx.student.rpn if hasattr(ctx.student, "rpn") else ctx.student  # Faster R-CNN: the RPN's
            generator = owner.anchor_generator
            per_location = set(generator.num_anchors_per_location())
            if len(per_location) != 1:
                raise DetkdError(f"distill.{ctx.name} needs the same number of anchors per location on every level, "
                                 f"the student has {sorted(per_location)}: align its anchor sizes/aspect ratios")
        pairs = resolve_levels(ctx.name, section.levels, ctx)
        levels = list(ctx.shapes()[0])
        method = cls(pairs, section.weight, section.psi, {p.student: levels.index(p.student) for p in pairs}, points)
        for p in pairs:
            method.per_level[module_key(p.student)] = nn.Conv2d(p.student_channels, p.teacher_channels, 3,
                                                                padding=1)
        return method

    def forward(self, rec: DistillRecord) -> dict[str, Tensor]:
        step = rec.step
        grids = step.grids
        with torch.no_grad():
            if self.points:
                sizes = [h * w for h, w in grids]
                masks = [[part.view(h, w).to(torch.float32) for part, (h, w) in zip((m >= 0).split(sizes), grids)]
                         for m in step.matched_idxs]
            else:
                masks = [fgfi_masks(anchors, target["boxes"], grids, step.anchors_per_location[0], self.psi)
                         for anchors, target in zip(step.anchors, rec.targets)]
        total = None
        for pair in self.pairs:
            t = rec.teacher_features[pair.teacher]
            s = match_size(self.level_module(pair)(rec.features[pair.student]), t.shape[-2:])
            mask = torch.stack([m[self.level_index[pair.student]] for m in masks]).to(s.dtype)
            if mask.shape[-2:] != t.shape[-2:]:
                mask = F.interpolate(mask[:, None], size=tuple(t.shape[-2:]), mode="nearest")[:, 0]
            value = masked_imitation_loss(s, t, mask)
            total = value if total is None else total + value
        self.stats = {f"raw_{self.name}": total.detach()}
        return {f"loss_{self.name}": total * self.weight}
