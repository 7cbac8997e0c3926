"""Detection distillation (Chen et al., NeurIPS 2017): the :class:`Distiller` wrapper and
its teacher/student compatibility checks."""

from detkd.distill.compat import check_compatible, enabled_terms
from detkd.distill.distiller import Distiller, build_distiller

__all__ = ["Distiller", "build_distiller", "check_compatible", "enabled_terms"]
