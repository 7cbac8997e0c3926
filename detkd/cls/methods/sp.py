"""Similarity-preserving KD (Tung & Mori 2019, "Similarity-Preserving Knowledge
Distillation"): ``L = ce_weight * CE + weight * ||G_t - G_s||_F^2 / B^2`` with
G = row-l2-normalize(Q Q^T) of one stage's maps; weight 3000 (docs/methods.md, section 2)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from detkd.cls.methods.base import StudentMethod, StudentOutputs, stage_index
from detkd.config.fields import option
from detkd.losses.kd import sp_loss


@dataclass
class SPConfig:
    """``method.sp``: ``stage`` is the same stage index in student and teacher (-1 = last)."""

    weight: float = option(3000.0, ge=0)
    stage: int = -1


class SPMethod(StudentMethod):
    config = SPConfig
    teachers_needed = "one"

    def setup(self, s_shapes, t_shapes) -> None:
        stage = self.options.stage
        self.sp_stages = (stage_index(stage, len(s_shapes), "method.sp.stage", "student"),
                          stage_index(stage, len(t_shapes[0]), "method.sp.stage", "teacher"))

    def terms(self, out: StudentOutputs) -> dict[str, Tensor]:
        si, ti = self.sp_stages
        return {"sp": self.options.weight * sp_loss(out.features[si], out.teacher_features[0][ti])}
