"""AVER, the average of the teachers' KD losses: ``L = ce_weight * CE + weight * (1/K)
sum_k T^2 KL(softmax(z_tk / T) || softmax(z_s / T))``, T = 4 (docs/methods.md, section 2)."""

from __future__ import annotations

from torch import Tensor

from detkd.cls.methods.base import StudentMethod, StudentOutputs
from detkd.cls.methods.kd import KDConfig
from detkd.losses.multi_teacher import aver_loss


class AVERMethod(StudentMethod):
    config = KDConfig
    teachers_needed = "several"

    def terms(self, out: StudentOutputs) -> dict[str, Tensor]:
        opts = self.options
        return {"kd": opts.weight * aver_loss(out.logits, out.teacher_logits, opts.temperature)}
