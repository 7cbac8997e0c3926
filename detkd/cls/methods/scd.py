"""SCD, similarity-consistency self-distillation (no public code; follows detkd's
specification, docs/methods.md section 2, SCD): ``L = ce_weight * CE + beta * sum_{l < L}
||S_l - sg(S_target)||_F^2 / B^2`` with S the batch similarity matrices of the stage maps;
beta 100 is not fixed by the spec."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from detkd.cls.methods.base import StudentMethod, StudentOutputs
from detkd.config.fields import option
from detkd.losses.online import scd_loss


@dataclass
class SCDConfig:
    """``method.scd``: ``target`` ``deepest`` (each shallow stage mimics the last) or ``next``
    (each stage mimics the next one)."""

    beta: float = option(100.0, ge=0)
    target: Literal["deepest", "next"] = "deepest"


class SCDMethod(StudentMethod):
    config = SCDConfig

    def terms(self, out: StudentOutputs) -> dict[str, Tensor]:
        return {"scd": self.options.beta * scd_loss(out.features, self.options.target)}
