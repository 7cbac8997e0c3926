"""FitNet-MKD, FitNet hints (Romero et al. 2015) from several teachers, one regressor each:
``L = ce_weight * CE + weight * (1/K) sum_k MSE(r_k(F_s), F_tk)`` on the last stage maps
(the regressors of CA-MKD, so the two are comparable); the spec does not fix the weight, 50
reuses CA-MKD's (docs/methods.md, section 2.9)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from detkd.cls.methods.base import StudentMethod, StudentOutputs
from detkd.config.fields import option
from detkd.losses.multi_teacher import CAMKDRegressors, fitnet_mkd_loss


@dataclass
class FitNetMKDConfig:
    """``method.fitnet_mkd``."""

    weight: float = option(50.0, ge=0)


class FitNetMKDMethod(StudentMethod):
    config = FitNetMKDConfig
    teachers_needed = "several"

    def setup(self, s_shapes, t_shapes) -> None:
        self.aux["regressors"] = CAMKDRegressors(s_shapes[-1][0], [s[-1] for s in t_shapes])

    def terms(self, out: StudentOutputs) -> dict[str, Tensor]:
        regressed = self.aux["regressors"](out.features[-1])
        return {"fitnet": self.options.weight * fitnet_mkd_loss(regressed, [f[-1] for f in out.teacher_features])}
