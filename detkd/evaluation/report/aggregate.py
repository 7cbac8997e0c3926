"""The report's numbers over runs: groups (mean ± std over seeds), speed-ups against the
teacher, the plot's accuracy axis and the Pareto front. Pure functions on run dicts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

from detkd.utils.stats import mean_std

__all__ = ["REPORT_METRICS", "accuracy_key", "aggregate_groups", "gap_closed", "mark_pareto", "pareto_front",
           "set_speedups"]

#: Metrics aggregated over seeds and shown in the tables (those present are used).
REPORT_METRICS = ("AP", "AP50", "VOC_mAP")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the Pareto-optimal ``(latency, accuracy)`` points, fastest first.

    Lower latency and higher accuracy are better; a point is on the front when no other
    point is at least as fast and at least as accurate and strictly better in one of the
    two. Identical points are all kept; points with a non-finite coordinate are ignored.
    """
    pts = [(i, float(x), float(y)) for i, (x, y) in enumerate(points)
           if math.isfinite(float(x)) and math.isfinite(float(y))]
    front = []
    for i, x, y in pts:
        dominated = any(x2 <= x and y2 >= y and (x2 < x or y2 > y) for _, x2, y2 in pts)
        if not dominated:
            front.append((x, -y, i))
    return [i for _, _, i in sorted(front)]


def aggregate_groups(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per group (in order of first appearance): n, seeds, mean/std of the metrics in
    :data:`REPORT_METRICS`, and of the median latency over the runs whose speed was
    measured (``n_speed``); size, GFLOPs, p90, throughput and memory are means too."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(run["name"], []).append(run)
    out = []
    for name, members in groups.items():
        timed = [r for r in members if r.get("latency")]
        g: dict[str, Any] = {
            "name": name,
            "role": members[0]["role"],
            "n": len(members),
            "seeds": [r["seed"] for r in members],
            "n_speed": len(timed),
        }
        for key in REPORT_METRICS:
            vals = [r["metrics"][key] for r in members if r.get("metrics") and key in r["metrics"]]
            if vals:
                g[f"{key}_mean"], g[f"{key}_std"] = mean_std(vals)
        g["params"] = mean_std([r["params"] for r in members])[0]
        g["gflops"] = mean_std([r["gflops"] for r in timed])[0]
        g["latency_median_ms"], g["latency_median_std"] = mean_std([r["latency"]["median_ms"] for r in timed])
        g["latency_p90_ms"] = mean_std([r["latency"]["p90_ms"] for r in timed])[0]
        g["throughput_img_s"] = mean_std([r["throughput"]["images_per_s"] for r in timed if r.get("throughput")])[0]
        g["peak_mem_mb"] = mean_std([r["memory"]["peak_mem_mb"] for r in timed if r.get("memory")])[0]
        out.append(g)
    return out


def set_speedups(runs: list[dict], groups: list[dict]) -> Optional[float]:
    """Set ``speedup_vs_teacher`` (teacher median latency / own) on runs and groups; the
    reference is the mean median latency of the teacher-role runs (None without one)."""
    ref = mean_std([r["latency"]["median_ms"] for r in runs if r["role"] == "teacher" and r.get("latency")])[0]
    for run in runs:
        own = run["latency"]["median_ms"] if run.get("latency") else None
        run["speedup_vs_teacher"] = ref / own if ref and own else None
    for g in groups:
        own = g["latency_median_ms"]
        g["speedup_vs_teacher"] = ref / own if ref and own else None
    return ref


def accuracy_key(groups: list[dict]) -> Optional[str]:
    """The y axis of the plot: AP50, else VOC mAP (also at IoU 0.5)."""
    for key in ("AP50", "VOC_mAP"):
        if any(g.get(f"{key}_mean") is not None for g in groups):
            return key
    return None


def mark_pareto(groups: list[dict], key: Optional[str]) -> None:
    """Set ``pareto`` on every group: on the front of ``key`` against median latency."""
    plotted = [g for g in groups if key and g.get(f"{key}_mean") is not None and g["latency_median_ms"] is not None]
    front = {plotted[i]["name"] for i in pareto_front([(g["latency_median_ms"], g[f"{key}_mean"]) for g in plotted])}
    for g in groups:
        g["pareto"] = g["name"] in front


def gap_closed(teacher: Optional[float], baseline: Optional[float], value: Optional[float]) -> Optional[float]:
    """The fraction of the teacher-baseline gap that ``value`` closes (None when undefined)."""
    if teacher is None or baseline is None or value is None or teacher == baseline:
        return None
    return (value - baseline) / (teacher - baseline)
