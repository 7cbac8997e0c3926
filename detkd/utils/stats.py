"""Small statistics over seeds, shared by the speed/accuracy report and the experiment script."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Optional


def mean_std(values: Iterable[Optional[float]]) -> tuple[Optional[float], Optional[float]]:
    """Mean and SAMPLE standard deviation (n - 1) of the finite values; std is None for one
    value, both are None for none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return None, None
    return statistics.fmean(finite), (statistics.stdev(finite) if len(finite) > 1 else None)
