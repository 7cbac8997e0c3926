"""Statistics over seeds for the experiments: mean ± std, paired gains, spread, gap closed.

:func:`mean_std` is :func:`detkd.utils.stats.mean_std` (the project's one convention:
sample standard deviation, n - 1; std None for a single value), re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Hashable, Optional

from detkd.utils.stats import STD_KIND, mean_std

__all__ = ["STD_KIND", "mean_std", "format_mean_std", "paired_differences", "spread", "gap_fraction",
           "gap_closed"]


def format_mean_std(mean: Optional[float], std: Optional[float], digits: int = 3) -> str:
    """``"0.271 ± 0.008"``; ``"0.271 ± -"`` without a std (one seed); ``"-"`` without a mean."""
    if mean is None:
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f} ± -"


def paired_differences(values: Mapping[Hashable, float], baseline: Mapping[Hashable, float]) -> list[float]:
    """Seed-for-seed differences ``values[s] - baseline[s]`` over the seeds both have, in the
    order of ``values`` (a run with seed s starts from the same seed as the baseline's)."""
    return [v - baseline[s] for s, v in values.items() if s in baseline]


def spread(*stds: Optional[float]) -> Optional[float]:
    """The seed-to-seed spread a gain must exceed: the largest of the given stds (e.g. both
    groups' stds and the std of their paired differences); None when none is known."""
    known = [s for s in stds if s is not None]
    return max(known) if known else None


def gap_fraction(teacher: float, baseline: float, distilled: float) -> Optional[float]:
    """Fraction of the teacher-student gap that distillation closed:
    ``(distilled - baseline) / (teacher - baseline)``; None when the teacher is not above
    the baseline (no gap to close)."""
    if teacher <= baseline:
        return None
    return (distilled - baseline) / (teacher - baseline)


def gap_closed(teacher: float, baseline: float, distilled: float) -> str:
    """:func:`gap_fraction` as a percentage ("n/a" without a gap)."""
    if gap_fraction(teacher, baseline, distilled) is None:
        return "n/a (the teacher is not above the baseline)"
    return f"{100 * (distilled - baseline) / (teacher - baseline):.0f}%"
