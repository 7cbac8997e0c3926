"""Classification methods: one file each, found by name in :data:`METHODS`.

A method's name is also its config section ``method.<name>``; the section's dataclass is the
method class's ``config`` (in the method's file). Everything else is derived from this dict:
the loader's sections, the valid ``method.name`` values and the checks of teachers, peers and
semi-supervised data (:mod:`detkd.cls.config`), the trained networks and the checkpoint
(:mod:`detkd.cls.train`), the tests. Adding a method: one file here (its config dataclass and
its :class:`~detkd.cls.methods.base.ClsMethod`, usually a
:class:`~detkd.cls.methods.base.StudentMethod` with ``setup`` and ``terms``) and one entry
below (docs/classification.md).
"""

from __future__ import annotations

from detkd.cls.methods.aekd import AEKDMethod
from detkd.cls.methods.at import ATMethod
from detkd.cls.methods.aver import AVERMethod
from detkd.cls.methods.base import ClsMethod, StudentMethod, StudentOutputs, labelled_ce
from detkd.cls.methods.baseline import BaselineMethod
from detkd.cls.methods.camkd import CAMKDMethod
from detkd.cls.methods.dml import DMLEMethod, DMLMethod
from detkd.cls.methods.ebkd import EBKDMethod
from detkd.cls.methods.ffl import FFLMethod
from detkd.cls.methods.fitnet import FitNetMethod
from detkd.cls.methods.fitnet_mkd import FitNetMKDMethod
from detkd.cls.methods.kd import KDMethod
from detkd.cls.methods.scd import SCDMethod
from detkd.cls.methods.sp import SPMethod

METHODS: dict[str, type[ClsMethod]] = {
    "baseline": BaselineMethod,
    "kd": KDMethod,
    "fitnet": FitNetMethod,
    "at": ATMethod,
    "sp": SPMethod,
    "aver": AVERMethod,
    "ebkd": EBKDMethod,
    "aekd": AEKDMethod,
    "camkd": CAMKDMethod,
    "fitnet_mkd": FitNetMKDMethod,
    "dml": DMLMethod,
    "dml_e": DMLEMethod,
    "ffl": FFLMethod,
    "scd": SCDMethod,
}

__all__ = ["METHODS", "ClsMethod", "StudentMethod", "StudentOutputs", "labelled_ce"]
