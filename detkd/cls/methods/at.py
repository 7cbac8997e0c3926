"""Attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention"):
``L = ce_weight * CE + weight * sum over the stage pairs of MSE(a_s, a_t)``,
a = l2normalize(mean_c F^2); weight 1000 (docs/methods.md, section 2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from detkd.cls.methods.base import StudentMethod, StudentOutputs, stage_index
from detkd.config.fields import option
from detkd.errors import DetkdError
from detkd.losses.kd import at_loss


@dataclass
class ATConfig:
    """``method.at``: ``stages`` are student stages; null = all, paired with the teacher's from
    the deepest; a listed stage pairs with the teacher stage at the same depth from the end."""

    weight: float = option(1000.0, ge=0)
    stages: Optional[list[int]] = None


class ATMethod(StudentMethod):
    config = ATConfig
    teachers_needed = "one"

    def setup(self, s_shapes, t_shapes) -> None:
        ns, nt = len(s_shapes), len(t_shapes[0])
        if self.options.stages is None:
            n = min(ns, nt)
            self.at_pairs = [(ns - n + i, nt - n + i) for i in range(n)]
            return
        pairs = []
        for idx in self.options.stages:
            si = stage_index(idx, ns, "method.at.stages", "student")
            ti = si + nt - ns  # same distance from the deepest stage
            if not 0 <= ti < nt:
                raise DetkdError(f"method.at.stages: student stage {si} has no teacher stage at the same "
                                 f"depth from the end (teacher has {nt} stages)")
            pairs.append((si, ti))
        self.at_pairs = pairs

    def terms(self, out: StudentOutputs) -> dict[str, Tensor]:
        t_feats = out.teacher_features[0]
        return {"at": self.options.weight * torch.stack(
            [at_loss(out.features[si], t_feats[ti]) for si, ti in self.at_pairs]).sum()}
