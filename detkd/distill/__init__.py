"""Detection distillation: the :class:`Distiller` (a student of any detector family beside a
frozen teacher of any family) and its methods, one file each in ``methods/`` found by name in
``METHODS`` (docs/distillation_methods.md)."""

from detkd.distill.distiller import Distiller, build_distiller
from detkd.distill.methods.chen import check_compatible, enabled_terms

__all__ = ["Distiller", "build_distiller", "check_compatible", "enabled_terms"]
