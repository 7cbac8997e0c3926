"""CA-MKD (Zhang et al., ICASSP 2022, "Confidence-Aware Multi-Teacher Knowledge
Distillation"): ``L = ce_weight * CE + weight * L_KD + inter_weight * L_inter``, both
weighted by the teachers' confidence (their CE on the labels); L_inter compares the
student's regressed last-stage map, pushed through each (frozen) teacher's own pooling and
classifier, with the teacher's. 1 x L_KD + 50 x L_inter, L_inter skipped in epoch 0
(docs/methods.md, section 2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from detkd.cls.methods.base import StudentMethod, StudentOutputs
from detkd.config.fields import option
from detkd.losses.multi_teacher import CAMKDRegressors, camkd_inter_loss, camkd_kd_loss


@dataclass
class CAMKDConfig:
    """``method.camkd``."""

    temperature: float = option(4.0, gt=0)
    weight: float = option(1.0, ge=0)
    inter_weight: float = option(50.0, ge=0)
    inter_start_epoch: int = 1  # L_inter off before this epoch (spec: skip epoch 0)
    detach_inter_weights: bool = False  # authors' code: the intermediate weights are not detached


class CAMKDMethod(StudentMethod):
    """One :class:`CAMKDRegressors` regressor per teacher on the last stage maps."""

    config = CAMKDConfig
    teachers_needed = "several"

    def setup(self, s_shapes, t_shapes) -> None:
        self.aux["regressors"] = CAMKDRegressors(s_shapes[-1][0], [s[-1] for s in t_shapes])

    def terms(self, out: StudentOutputs) -> dict[str, Tensor]:
        opts = self.options
        terms = {"kd": opts.weight * camkd_kd_loss(out.logits, out.teacher_logits, out.labels, opts.temperature)}
        if out.epoch >= opts.inter_start_epoch:
            regressed = self.aux["regressors"](out.features[-1])
            classifiers: list[Callable[[Tensor], Tensor]] = [t.classifier_from_features for t in self.teachers]
            terms["inter"] = opts.inter_weight * camkd_inter_loss(
                regressed, [f[-1] for f in out.teacher_features], classifiers, out.labels,
                detach_weights=opts.detach_inter_weights)
        return terms
