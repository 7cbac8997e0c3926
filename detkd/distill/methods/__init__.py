"""Detection distillation methods: one file each, found by name in :data:`METHODS`.

A method's name is also its config section: ``distill.<name>`` (Chen et al.'s knobs are the
flat ``distill.*`` keys, switched off with ``distill.chen: false``). Adding a method: a file
here with a :class:`DistillMethod` subclass, its config dataclass in detkd/config/schema.py
and one entry below (docs/distillation_methods.md).
"""

from __future__ import annotations

from detkd.distill.methods.base import BuildContext, DistillMethod, DistillRecord, LevelPair
from detkd.distill.methods.chen import ChenMethod
from detkd.distill.methods.cwd import CWDMethod
from detkd.distill.methods.fgd import FGDMethod
from detkd.distill.methods.fgfi import FGFIMethod
from detkd.distill.methods.mgd import MGDMethod
from detkd.distill.methods.pkd import PKDMethod

METHODS: dict[str, type[DistillMethod]] = {
    "chen": ChenMethod,
    "pkd": PKDMethod,
    "cwd": CWDMethod,
    "mgd": MGDMethod,
    "fgd": FGDMethod,
    "fgfi": FGFIMethod,
}

__all__ = ["METHODS", "BuildContext", "DistillMethod", "DistillRecord", "LevelPair"]
