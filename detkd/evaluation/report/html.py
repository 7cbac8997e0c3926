"""report.html: the whole report on one page that opens from disk (no server, no network).

Sections: the comparison table (per group: mean ± std over seeds, the seeds' range, the gap
closed between the baseline and the teacher, size and speed), the runs, the Pareto plot
(report.png), per-class AP50 bars per group, loss and AP curves from each run's
``metrics.jsonl`` (beside its checkpoint) and example pictures. Every image is embedded as a
base64 ``data:`` URI, so the page is one file; plots are matplotlib figures as report.png.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from detkd.evaluation.report.aggregate import REPORT_METRICS, gap_closed
from detkd.utils.atomic import atomic_write_text

__all__ = ["page", "read_curves", "write_html"]

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1500px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}img{max-width:100%;height:auto}
figure{margin:1.5em 0}figcaption{color:#444;margin:.3em 0 0}.note{color:#555;font-size:90%}
section{margin-bottom:2.5em}"""


def _uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure(png: Optional[bytes], alt: str, caption: str = "") -> str:
    if png is None:
        return f"<p class='note'>{html.escape(alt)}: nothing to plot.</p>"
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f"<figure><img src='{_uri(png)}' alt='{html.escape(alt)}'>{cap}</figure>"


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def comparison_table(report: dict[str, Any], baseline: Optional[str]) -> str:
    """Per group: n, seeds, each metric's mean ± std and range, the gap closed, size, speed."""
    groups, runs, key = report["groups"], report["runs"], report.get("accuracy_key")
    metrics = [k for k in REPORT_METRICS if any(g.get(f"{k}_mean") is not None for g in groups)]
    teacher = next((g for g in groups if g["role"] == "teacher"), None)
    base = next((g for g in groups if g["name"] == baseline), None)
    head = ["group", "n (seeds)", *[f"{k} mean ± std" for k in metrics], f"{key} range over seeds",
            f"gap closed ({key})", "params (M)", "GFLOPs", "latency median (ms)", "vs teacher", "Pareto"]
    rows = []
    for g in groups:
        vals = [r["metrics"][key] for r in runs if r["name"] == g["name"] and r.get("metrics") and key in r["metrics"]]
        spread = f"{min(vals):.3f} – {max(vals):.3f}" if len(vals) > 1 else "one seed"
        gap = None
        if teacher is not None and base is not None and g is not teacher and g is not base:
            gap = gap_closed(teacher.get(f"{key}_mean"), base.get(f"{key}_mean"), g.get(f"{key}_mean"))
        seeds = ", ".join("-" if s is None else str(s) for s in g["seeds"])
        cells = [g["name"], f"{g['n']} ({seeds})" if any(s is not None for s in g["seeds"]) else str(g["n"]),
                 *[_fmt(g.get(f"{k}_mean")) + ("" if g.get(f"{k}_std") is None else f" ± {g[f'{k}_std']:.3f}")
                   for k in metrics], spread, "-" if gap is None else f"{100 * gap:.0f}%",
                 _fmt(g["params"] / 1e6, 2), _fmt(g.get("gflops"), 2), _fmt(g.get("latency_median_ms"), 1),
                 "-" if not g.get("speedup_vs_teacher") else f"{g['speedup_vs_teacher']:.2f}x",
                 "yes" if g.get("pareto") else ""]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    note = (f"Gap closed: (group − {baseline}) / (teacher − {baseline}) of the mean {key}." if base and teacher
            else "Gap closed needs a teacher group and a baseline group (--baseline).")
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" + "".join(rows)
            + f"</table><p class='note'>{html.escape(note)} Std: sample std over the group's runs (seeds).</p>")


def per_class_plot(report: dict[str, Any]) -> Optional[bytes]:
    """Bars of each class's AP50, one bar per group (mean over its runs)."""
    import numpy as np

    by_group: dict[str, dict[str, list[float]]] = {}
    for r in report["runs"]:
        for row in r.get("per_class") or []:
            if row["AP50"] >= 0:
                by_group.setdefault(r["name"], {}).setdefault(row["name"], []).append(row["AP50"])
    if not by_group:
        return None
    classes = list(dict.fromkeys(c for g in by_group.values() for c in g))
    fig = _new_figure(max(6.4, 0.9 * len(classes) + 2), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / len(by_group)
    for i, (name, rows) in enumerate(by_group.items()):
        ys = [float(np.mean(rows[c])) if c in rows else 0.0 for c in classes]
        ax.bar(np.arange(len(classes)) + (i - (len(by_group) - 1) / 2) * width, ys, width, label=name)
    ax.set_xticks(np.arange(len(classes)), classes, rotation=30, ha="right")
    ax.set_ylabel(f"AP50 ({report['settings']['split']})")
    top = max((max(np.mean(v) for v in rows.values()) for rows in by_group.values()), default=0.0)
    ax.set_ylim(0, min(1.0, max(0.05, 1.15 * top)))
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=9)
    return _png(fig)


def read_curves(checkpoint: str) -> dict[str, list[tuple[int, float]]]:
    """``{"loss": [(iter, loss)], "AP50": [(iter, AP50)]}`` from the ``metrics.jsonl`` beside
    ``checkpoint`` (empty lists when there is none or a line is unreadable)."""
    curves: dict[str, list[tuple[int, float]]] = {"loss": [], "AP50": []}
    path = Path(checkpoint).parent / "metrics.jsonl"
    if not path.is_file():
        return curves
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("type") == "train" and isinstance(rec.get("loss"), (int, float)):
            curves["loss"].append((rec["iter"], rec["loss"]))
        elif rec.get("type") == "eval" and isinstance(rec.get("AP50"), (int, float)):
            curves["AP50"].append((rec["iter"], rec["AP50"]))
    return curves


def curves_plot(report: dict[str, Any]) -> Optional[bytes]:
    """Training loss and val AP50 against the iteration, one line per run."""
    curves = {r["label"]: read_curves(r["checkpoint"]) for r in report["runs"]}
    if not any(c["loss"] or c["AP50"] for c in curves.values()):
        return None
    fig = _new_figure(12, 4.2)
    loss_ax, ap_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for label, c in curves.items():
        if c["loss"]:
            loss_ax.plot(*zip(*c["loss"]), label=label, lw=1.2)
        if c["AP50"]:
            ap_ax.plot(*zip(*c["AP50"]), marker="o", label=label)
    for ax, name in ((loss_ax, "training loss (total)"), (ap_ax, "val AP50 (at each evaluation)")):
        ax.set_xlabel("iteration")
        ax.set_title(name, fontsize=10)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return _png(fig)


def pictures_section(pictures: Sequence[dict[str, Any]], rule: str) -> str:
    """The example pictures (``picture`` paths), each under why it was chosen."""
    if not pictures:
        return "<p class='note'>No example pictures.</p>"
    parts = [f"<p class='note'>How the images were chosen: {html.escape(rule)}.</p>"]
    for p in pictures:
        png = Path(p["picture"]).read_bytes()
        parts.append(_figure(png, Path(p["image"]).name, f"{Path(p['image']).name}: {p['why']}"))
    return "".join(parts)


def page(report: dict[str, Any], pictures: Sequence[dict[str, Any]] = (), rule: str = "",
         baseline: Optional[str] = None, pareto_png: Optional[bytes] = None) -> str:
    """The HTML text of the page."""
    env, key = report["environment"], report.get("accuracy_key")
    title = "Speed/accuracy report"
    body = [
        f"<h1>{title}</h1>",
        f"<p class='note'>{html.escape(report['date'])} · {html.escape(env['device'])} "
        f"({html.escape(env['device_name'])}),"
        f" torch {html.escape(env['torch'])}, threads {env['torch_threads']} · <code>{html.escape(report['command'])}"
        "</code></p>",
        "<section><h2>Comparison</h2>", comparison_table(report, baseline), "</section>",
        "<section><h2>Accuracy against speed</h2>",
        _figure(pareto_png, "Pareto plot", f"{key} against batch-1 median latency; green: the Pareto front"),
        "</section>",
        "<section><h2>Per-class AP50</h2>", _figure(per_class_plot(report), "per-class AP50"), "</section>",
        "<section><h2>Training curves</h2>",
        _figure(curves_plot(report), "training curves", "from each run's metrics.jsonl"), "</section>",
        "<section><h2>Example detections</h2>", pictures_section(pictures, rule), "</section>",
    ]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{title}</title><style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_html(report: dict[str, Any], out: Path, pictures: Sequence[dict[str, Any]] = (), rule: str = "",
               baseline: Optional[str] = None) -> Path:
    """Write ``out/report.html`` (the plot from ``out/report.png`` when there is one); its path."""
    png_path = out / "report.png"
    path = out / "report.html"
    atomic_write_text(page(report, pictures, rule, baseline, png_path.read_bytes() if png_path.is_file() else None),
                      path)
    return path
