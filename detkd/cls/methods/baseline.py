"""The baseline: the student alone, ``L = ce_weight * CE(z_s, y)`` over the labelled samples
(docs/methods.md, section 2); a ``baseline`` run's ``model_final.pth`` serves as a teacher."""

from __future__ import annotations

from dataclasses import dataclass

from detkd.cls.methods.base import StudentMethod


@dataclass
class BaselineConfig:
    """No options (no ``method.baseline`` section is filled in)."""


class BaselineMethod(StudentMethod):
    config = BaselineConfig
    semi_supervised = True
