"""The report's files: report.md, report.csv, report.json and report.png (written atomically)
from the report dict that :func:`detkd.evaluation.report.run_report` assembles."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Optional

from detkd.evaluation.coco_eval import COCO_METRIC_NAMES
from detkd.evaluation.report.aggregate import REPORT_METRICS, pareto_front
from detkd.utils.atomic import atomic_write_bytes, atomic_write_text

__all__ = ["csv_table", "json_safe", "markdown", "plot", "write_report"]


def _num(value: Optional[float], sig: int = 3) -> str:
    """``sig`` significant digits without exponent; ``-`` for a missing value."""
    if value is None or not math.isfinite(value):
        return "-"
    if value == 0:
        return "0"
    decimals = max(0, sig - 1 - int(math.floor(math.log10(abs(value)))))
    return f"{value:.{decimals}f}"


def _ap(value: Optional[float], std: Optional[float] = None) -> str:
    if value is None:
        return "-"
    if value < 0:
        return "n/a"  # pycocotools' -1: undefined (no ground truth)
    return f"{value:.3f}" + (f" ± {std:.3f}" if std is not None else "")


def _speedup(value: Optional[float]) -> str:
    return f"{value:.2f}x" if value else "-"


def markdown(report: dict) -> str:
    """report.md: the settings, one row per run and, when a group has several runs, one per group."""
    env, s = report["environment"], report["settings"]
    runs, groups = report["runs"], report["groups"]
    metric_keys = [k for k in REPORT_METRICS if any(k in (r.get("metrics") or {}) for r in runs)]
    mem_methods = sorted({r["memory"]["mem_method"] for r in runs if r.get("memory")})
    n_images = "/".join(str(n) for n in sorted({r["latency"]["images"] for r in runs if r.get("latency")})) or "-"
    lines = [
        "# Speed/accuracy report",
        "",
        f"{report['date']}, `{report['command']}`",
        "",
        f"* device: {env['device']} ({env['device_name']}), torch {env['torch']} / torchvision "
        f"{env['torchvision']}, torch threads: {env['torch_threads']}, CPU: {env['cpu_model']}",
        f"* accuracy: {', '.join(metric_keys) or 'none'} on the `{s['split']}` split, computed as "
        "tools/eval_det.py computes them" + ("" if s["evaluate"] else " (evaluation off; given metrics only)"),
        f"* latency: batch 1, the whole `model([image])` call, median and p90 of {s['runs']} timed runs "
        f"(after {s['warmup']} warm-up) cycling over the first {n_images} images of the split",
        f"* throughput: batch {s['throughput_batch']}" if s["throughput_batch"] else "* throughput: not measured",
        "* GFLOPs: torch.utils.flop_counter.FlopCounterMode on the first image (convolutions and "
        "matrix products only; elementwise ops, RoIAlign and NMS are not counted)",
        f"* peak memory: one batch-1 forward, weights included; method: {', '.join(mem_methods) or '-'} "
        "(see detkd/evaluation/profile.py)",
        "",
        "## Runs",
        "",
    ]
    head = ["model", "seed", "params (M)", "GFLOPs", *metric_keys, "latency median (ms)", "p90 (ms)",
            "throughput (img/s)", "peak mem (MB)", "vs teacher"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        m, lat = r.get("metrics") or {}, r.get("latency") or {}
        cells = [r["name"], "-" if r["seed"] is None else str(r["seed"]), _num(r["params"] / 1e6),
                 _num(r.get("gflops")), *[_ap(m.get(k)) for k in metric_keys],
                 _num(lat.get("median_ms")), _num(lat.get("p90_ms")),
                 _num((r.get("throughput") or {}).get("images_per_s")),
                 _num((r.get("memory") or {}).get("peak_mem_mb")), _speedup(r.get("speedup_vs_teacher"))]
        lines.append("| " + " | ".join(cells) + " |")
    if any(g["n"] > 1 for g in groups):
        lines += ["", "## Groups (mean ± sample std over runs)", ""]
        head = ["group", "n", *metric_keys, "latency median (ms)", "vs teacher", "Pareto"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for g in groups:
            cells = [g["name"], str(g["n"]), *[_ap(g.get(f"{k}_mean"), g.get(f"{k}_std")) for k in metric_keys],
                     _num(g["latency_median_ms"]), _speedup(g["speedup_vs_teacher"]), "yes" if g["pareto"] else ""]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if report["files"].get("png"):
        front = ", ".join(g["name"] for g in groups if g["pareto"])
        lines += [f"Pareto front ({report['accuracy_key']} vs median latency, by group): {front}", "",
                  "![speed/accuracy](report.png)", ""]
    return "\n".join(lines)


_CSV_SPEED = [("latency_median_ms", "latency", "median_ms"), ("latency_p90_ms", "latency", "p90_ms"),
              ("latency_mean_ms", "latency", "mean_ms"), ("latency_min_ms", "latency", "min_ms"),
              ("throughput_img_s", "throughput", "images_per_s"), ("throughput_batch", "throughput", "batch_size"),
              ("peak_mem_mb", "memory", "peak_mem_mb"), ("mem_method", "memory", "mem_method"),
              ("weights_mb", "memory", "weights_mb")]


def csv_table(runs: list[dict]) -> str:
    """report.csv: every metric present and every speed number, one row per run."""
    present = {k for r in runs for k in (r.get("metrics") or {})}
    metric_keys = [k for k in (*COCO_METRIC_NAMES, "VOC_mAP", "VOC_mAP_07") if k in present]
    head = ["name", "seed", "role", "config", "checkpoint", "params", "gflops", *metric_keys,
            *[c for c, _, _ in _CSV_SPEED], "speedup_vs_teacher"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(head)
    for r in runs:
        m = r.get("metrics") or {}
        row = [r["name"], r["seed"], r["role"], r["config"], r["checkpoint"], r["params"], r.get("gflops"),
               *[m.get(k) for k in metric_keys],
               *[(r.get(sec) or {}).get(key) for _, sec, key in _CSV_SPEED], r.get("speedup_vs_teacher")]
        writer.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def plot(groups: list[dict], key: str, env: dict, split: str) -> Optional[bytes]:
    """PNG bytes of the accuracy/latency plot (None when no group has both numbers)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = [g for g in groups if g.get(f"{key}_mean") is not None and g["latency_median_ms"] is not None]
    if not shown:
        return None
    # A bare Figure on the Agg canvas: no pyplot, no global backend switch.
    fig = Figure(figsize=(6.4, 4.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = [g["latency_median_ms"] for g in shown]
    ys = [g[f"{key}_mean"] for g in shown]
    by_latency = sorted(range(len(shown)), key=lambda i: xs[i])
    for rank, i in enumerate(by_latency):
        g, x, y = shown[i], xs[i], ys[i]
        ax.errorbar(x, y, yerr=g.get(f"{key}_std"), xerr=g.get("latency_median_std"), fmt="o", capsize=4,
                    color="tab:red" if g["role"] == "teacher" else "tab:blue")
        n = f" (n={g['n']})" if g["n"] > 1 else ""
        # Alternate above/below so that neighbours in latency do not print over each other.
        ax.annotate(g["name"] + n, (x, y), textcoords="offset points", xytext=(6, 6 if rank % 2 == 0 else -14),
                    fontsize=9)
    front = pareto_front(list(zip(xs, ys)))
    if front:
        fx, fy = [xs[i] for i in front], [ys[i] for i in front]
        # Step: the best accuracy reachable within a latency budget.
        ax.step(fx, fy, where="post", color="tab:green", lw=1.5, label="Pareto front")
        ax.scatter(fx, fy, s=160, facecolors="none", edgecolors="tab:green", linewidths=1.5, zorder=3)
        ax.legend(loc="lower right", fontsize=9)
    ax.set_xlabel(f"median latency per image, batch 1 (ms) on {env['device']}")
    ax.set_ylabel(f"{key} ({split})")
    ax.set_title(f"{env['device_name']}, torch threads: {env['torch_threads']}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.15, y=0.15)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None, lists for tuples."""
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_report(report: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write the plot (when a group has both numbers), report.csv, report.md and
    report.json into ``out``; ``report["files"]`` lists them. Returns the report as
    written to JSON."""
    out.mkdir(parents=True, exist_ok=True)
    key = report["accuracy_key"]
    png = plot(report["groups"], key, report["environment"], report["settings"]["split"]) if key else None
    if png is not None:
        atomic_write_bytes(png, out / "report.png")
        report["files"]["png"] = str(out / "report.png")
    elif (out / "report.png").exists():
        (out / "report.png").unlink()  # a stale plot from an earlier report would mislead
    report["files"].update(md=str(out / "report.md"), csv=str(out / "report.csv"), json=str(out / "report.json"))
    atomic_write_text(csv_table(report["runs"]), out / "report.csv")
    atomic_write_text(markdown(report), out / "report.md")
    report = json_safe(report)
    atomic_write_text(json.dumps(report, indent=2), out / "report.json")
    return report
