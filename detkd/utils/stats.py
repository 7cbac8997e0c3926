"""Mean ± std over seeds: the one convention of the whole project.

The speed/accuracy report (detkd.evaluation.report) and the experiments (detkd.experiments:
the detection seeds experiment, the classification experiment) all use :func:`mean_std`.
It lives here, below evaluation, because the report needs it; the experiment-level helpers
built on it (paired gains, spread, fraction of the gap closed) are in detkd.experiments.stats.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Optional

#: How the std of :func:`mean_std` is computed, in words (written into summary files).
STD_KIND = "sample standard deviation (n - 1); null for n = 1"


def mean_std(values: Iterable[Optional[float]]) -> tuple[Optional[float], Optional[float]]:
    """Mean and SAMPLE standard deviation (ddof = 1, i.e. divided by n - 1) of the finite
    values (None and NaN/inf are left out).

    One value: ``(value, None)``: a single seed has no spread, and it is not reported as 0
    (tables print it as "-"). No value: ``(None, None)``.
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return None, None
    return statistics.fmean(finite), (statistics.stdev(finite) if len(finite) > 1 else None)
