"""Detection distillation methods: one file each, found by name in :data:`METHODS`.

A method's name is also its config section ``distill.<name>``; the section's dataclass is the
method class's ``config`` (in the method's file). Everything else is derived from this dict:
the loader's sections and checks (detkd.recipe), the Distiller's build order, the checkpoint
keys (``distill`` state of ``last.pth``: ``<name>.<parameter>``), the log keys and the tests.
Adding a method: one file here and one entry below (docs/distillation_methods.md).
"""

from __future__ import annotations

from detkd.distill.methods.base import BuildContext, DistillMethod, DistillRecord, LevelPair
from detkd.distill.methods.chen import ChenConfig, ChenMethod
from detkd.distill.methods.crosskd import CrossKDMethod
from detkd.distill.methods.cwd import CWDMethod
from detkd.distill.methods.fgd import FGDMethod
from detkd.distill.methods.fgfi import FGFIMethod
from detkd.distill.methods.mgd import MGDMethod
from detkd.distill.methods.mimic import MimicMethod
from detkd.distill.methods.pkd import PKDMethod
from detkd.distill.methods.predictions import PredictionsMethod

METHODS: dict[str, type[DistillMethod]] = {
    "chen": ChenMethod,
    "pkd": PKDMethod,
    "cwd": CWDMethod,
    "mgd": MGDMethod,
    "fgd": FGDMethod,
    "fgfi": FGFIMethod,
    "mimic": MimicMethod,
    "crosskd": CrossKDMethod,
    "predictions": PredictionsMethod,
}

__all__ = ["METHODS", "BuildContext", "ChenConfig", "DistillMethod", "DistillRecord", "LevelPair"]
