"""FitNet (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"): ``L = ce_weight * CE +
weight * MSE(r(F_s), F_t)`` on one stage of each network, the regressor r trained jointly;
weight 100 (docs/methods.md, section 2). r is picked by the spatial ratio of the two maps
(1x1 conv, 3x3 stride 2, 4x4 transposed; :class:`~detkd.losses.kd.ConvRegressor`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from detkd.cls.methods.base import StudentMethod, StudentOutputs, stage_index
from detkd.config.fields import option
from detkd.errors import DetkdError
from detkd.losses.kd import ConvRegressor, fitnet_loss


@dataclass
class FitNetConfig:
    """``method.fitnet``. Stage indices count from 0 (shallow) and may be negative (-1 = last)."""

    weight: float = option(100.0, ge=0)
    stage: int = -1  # student stage of the hint
    teacher_stage: Optional[int] = None  # default: the same as stage


class FitNetMethod(StudentMethod):
    config = FitNetConfig
    teachers_needed = "one"

    def setup(self, s_shapes, t_shapes) -> None:
        opts = self.options
        si = stage_index(opts.stage, len(s_shapes), "method.fitnet.stage", "student")
        ti_raw = opts.teacher_stage if opts.teacher_stage is not None else opts.stage
        ti = stage_index(ti_raw, len(t_shapes[0]), "method.fitnet.teacher_stage", "teacher")
        try:
            self.aux["regressor"] = ConvRegressor(s_shapes[si], t_shapes[0][ti])
        except ValueError as exc:
            raise DetkdError(f"fitnet: student stage {si} and teacher stage {ti} cannot be paired: {exc}; "
                             f"choose other stages (method.fitnet.stage / method.fitnet.teacher_stage)") from None
        self.fitnet_stages = (si, ti)

    def terms(self, out: StudentOutputs) -> dict[str, Tensor]:
        si, ti = self.fitnet_stages
        regressed = self.aux["regressor"](out.features[si])
        return {"fitnet": self.options.weight * fitnet_loss(regressed, out.teacher_features[0][ti])}
