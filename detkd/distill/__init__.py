"""Detection distillation: the :class:`Distiller` (a student trained against a frozen teacher,
any two detector families) and its methods, one file each in ``methods/`` (Chen et al.,
the FPN-feature methods, CrossKD; :data:`detkd.distill.methods.METHODS`)."""

from detkd.distill.distiller import Distiller, build_distiller
from detkd.distill.methods.chen import check_compatible, enabled_terms

__all__ = ["Distiller", "build_distiller", "check_compatible", "enabled_terms"]
