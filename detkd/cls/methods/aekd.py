"""AEKD (Du et al., NeurIPS 2020, "Agree to Disagree: Adaptive Ensemble Knowledge
Distillation in Gradient Space", logit version): ``L = ce_weight * CE + weight * sum_k w_k
L_KD,k`` with the teacher weights w from a one-class SVM in gradient space,
nu = 1 / (c_tol K) (docs/methods.md, section 2)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from detkd.cls.methods.base import StudentMethod, StudentOutputs
from detkd.config.fields import option
from detkd.losses.multi_teacher import aekd_loss


@dataclass
class AEKDConfig:
    """``method.aekd``: temperature T, the weight of the KD term, the SVM's tolerance c_tol."""

    temperature: float = option(4.0, gt=0)
    weight: float = option(1.0, ge=0)
    c_tol: float = option(0.6, gt=0)


class AEKDMethod(StudentMethod):
    config = AEKDConfig
    teachers_needed = "several"

    def terms(self, out: StudentOutputs) -> dict[str, Tensor]:
        opts = self.options
        return {"kd": opts.weight * aekd_loss(out.logits, out.teacher_logits, opts.temperature, c_tol=opts.c_tol)}
