"""EBKD, entropy-based KD (Kwon et al., ICASSP 2020, "Adaptive Knowledge Distillation Based on
Entropy"): ``L = ce_weight * CE + weight * (1/(B K)) sum_k sum_i w_k,i KD_i(z_s, z_tk)`` with
w_k,i = 1 - H_k,i / sum_j H_j,i (H: the entropy of teacher k's prediction for sample i),
T = 4 (docs/methods.md, section 2.6)."""

from __future__ import annotations

from torch import Tensor

from detkd.cls.methods.base import StudentMethod, StudentOutputs
from detkd.cls.methods.kd import KDConfig
from detkd.losses.multi_teacher import ebkd_loss


class EBKDMethod(StudentMethod):
    config = KDConfig
    teachers_needed = "several"

    def terms(self, out: StudentOutputs) -> dict[str, Tensor]:
        opts = self.options
        return {"kd": opts.weight * ebkd_loss(out.logits, out.teacher_logits, opts.temperature)}
