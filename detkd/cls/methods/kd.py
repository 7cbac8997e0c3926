"""Logit KD (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"):
``L = ce_weight * CE + weight * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))`` (batchmean),
T = 4 (docs/methods.md, section 2)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from detkd.cls.methods.base import StudentMethod, StudentOutputs
from detkd.config.fields import option
from detkd.losses.kd import kd_loss


@dataclass
class KDConfig:
    """``method.kd`` (``aver`` and ``ebkd`` take the same options): temperature T and the
    weight of the KD term."""

    temperature: float = option(4.0, gt=0)
    weight: float = option(1.0, ge=0)


class KDMethod(StudentMethod):
    config = KDConfig
    teachers_needed = "one"

    def terms(self, out: StudentOutputs) -> dict[str, Tensor]:
        opts = self.options
        return {"kd": opts.weight * kd_loss(out.logits, out.teacher_logits[0], opts.temperature)}
