"""Speed/accuracy report: several detectors side by side (issue #5).

For every :class:`ModelEntry` (a group name such as ``teacher``/``baseline``/``distilled``,
a config, a checkpoint, optionally a seed), :func:`run_report` builds the model, loads the
checkpoint, scores it on the config's evaluation split with exactly the code of
``tools/eval_det.py`` (:func:`~detkd.evaluation.inference.load_detector`,
:func:`~detkd.evaluation.inference.build_eval_data`,
:func:`~detkd.evaluation.inference.evaluate_detector`), and measures its parameters,
GFLOPs, batch-1 latency, throughput and peak memory with :mod:`detkd.evaluation.profile`.
It writes into ``out_dir``:

* ``report.md``: one row per run; when a group has several runs (seeds), a second table
  with mean ± std (sample std, n - 1) and n; speed relative to the teacher group's median
  latency ("x faster than teacher"); the environment and the command line;
* ``report.csv``: the per-run numbers, one row per run;
* ``report.json``: every number, the environment, the settings and the command line;
* ``report.png``: AP50 against median latency, one point per group (mean; error bars =
  std over runs when n > 1), labelled, with the Pareto front drawn as a step line.

All files are written atomically.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import gc
import io
import json
import math
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from detkd.utils.atomic import atomic_write_bytes, atomic_write_text
from detkd.errors import DetkdError
from detkd.evaluation import profile
from detkd.utils.stats import mean_std
from detkd.evaluation.coco_eval import COCO_METRIC_NAMES

__all__ = ["ModelEntry", "run_report", "pareto_front", "aggregate_groups"]

#: Metrics aggregated over seeds and shown in the tables (those present are used).
REPORT_METRICS = ("AP", "AP50", "VOC_mAP")
SPEED_FOR = ("all", "first_of_group")


@dataclass
class ModelEntry:
    """One trained model in the report.

    ``name`` is the group label (``teacher``, ``baseline``, ``distilled``...): runs of one
    group (e.g. seeds) are aggregated. ``checkpoint`` is a model_final.pth, a detkd
    last.pth/best.pth or a plain state dict matching ``config``. ``role`` defaults to
    ``"teacher"`` for the group named ``teacher`` and ``"student"`` otherwise; teacher
    runs are the 1x reference of the speed-up column. ``metrics`` (e.g. a run's
    results.json ``final``) skips the evaluation of this entry. ``opts`` are config
    overrides, as ``--opts`` of the tools.
    """

    name: str
    config: str
    checkpoint: str
    seed: Optional[int] = None
    role: Optional[str] = None
    metrics: Optional[dict[str, float]] = None
    opts: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.name if self.seed is None else f"{self.name}@{self.seed}"

    @property
    def resolved_role(self) -> str:
        return self.role or ("teacher" if self.name == "teacher" else "student")


# ----------------------------------------------------------------------------- pure helpers


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


def _speedups(runs: list[dict], groups: list[dict]) -> Optional[float]:
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


def _accuracy_key(groups: list[dict]) -> Optional[str]:
    """The y axis of the plot: AP50, else VOC mAP (also at IoU 0.5)."""
    for key in ("AP50", "VOC_mAP"):
        if any(g.get(f"{key}_mean") is not None for g in groups):
            return key
    return None


# ----------------------------------------------------------------------------- formatting


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


def _markdown(report: dict) -> str:
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


def _csv(runs: list[dict]) -> str:
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


def _plot(groups: list[dict], key: str, env: dict, split: str) -> Optional[bytes]:
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


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# ----------------------------------------------------------------------------- the report


def _check_settings(entries: Sequence[ModelEntry], split: str, warmup: int, runs: int, throughput_batch: int,
                    threads: Optional[int], measure_speed_for: str, speed_images: int) -> None:
    if not entries:
        raise DetkdError("the report needs at least one model")
    if measure_speed_for not in SPEED_FOR:
        raise DetkdError(f"measure_speed_for must be one of {SPEED_FOR}, got '{measure_speed_for}'")
    if split not in ("val", "train"):
        raise DetkdError(f"split must be 'val' or 'train', got '{split}'")
    if warmup < 0 or runs < 1 or throughput_batch < 0 or speed_images < 1 or (threads is not None and threads < 1):
        raise DetkdError(f"need warmup >= 0, runs >= 1, throughput_batch >= 0 (0: skip), speed_images >= 1 and "
                         f"threads >= 1, got warmup={warmup}, runs={runs}, throughput_batch={throughput_batch}, "
                         f"speed_images={speed_images}, threads={threads}")
    seen = set()
    for e in entries:
        if not e.name or "@" in e.name:
            raise DetkdError(f"model name '{e.name}' must be non-empty and without '@'")
        if e.resolved_role not in ("teacher", "student"):
            raise DetkdError(f"model {e.label}: role must be 'teacher' or 'student', got '{e.role}'")
        if e.label in seen:
            raise DetkdError(f"model {e.label} is listed twice (give the runs of a group different seeds)")
        seen.add(e.label)


def load_entry(entry: ModelEntry):
    """(config, model with the checkpoint's weights) of one entry; one-line errors."""
    from detkd.recipe import load_config
    from detkd.evaluation.inference import load_detector

    if not Path(entry.config).is_file():
        raise DetkdError(f"model {entry.label}: config file not found: {entry.config}")
    if not Path(entry.checkpoint).is_file():
        raise DetkdError(f"model {entry.label}: checkpoint not found: {entry.checkpoint}")
    cfg = load_config(entry.config, entry.opts)
    return cfg, load_detector(cfg.model, entry.checkpoint)


def run_report(entries: Sequence[ModelEntry], out_dir: str | Path, *, device: str = "cpu", split: str = "val",
               warmup: int = 10, runs: int = 50, throughput_batch: int = 8, threads: Optional[int] = None,
               measure_speed_for: str = "all", evaluate: bool = True, metric: Optional[str] = None,
               speed_images: int = 32, latency_rounds: int = 5, progress: Optional[bool] = None,
               command: Optional[str] = None) -> dict[str, Any]:
    """Evaluate and time every entry; write report.md/.csv/.json/.png into ``out_dir``.

    Args:
        entries: the models, in table order; runs sharing a ``name`` form a group.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``; used for evaluation and timing.
        split: the config's data split to evaluate and to take the timing images from.
        warmup, runs: batch-1 latency: untimed warm-up forwards, then timed forwards.
        latency_rounds: the timed models' latencies are measured side by side, after every
            other measurement, in this many rounds (each round times every model for its
            share of ``runs``; :func:`profile.measure_latency_interleaved`), so that a
            slow phase of the machine does not fall on one model only.
        throughput_batch: batch size of the throughput measurement (0: skip it); it runs
            ``ceil(runs / throughput_batch)`` timed batches after ``ceil(warmup /
            throughput_batch)`` warm-up ones, i.e. about as many images as the latency.
        threads: ``torch.set_num_threads`` during the report (restored after); None keeps
            the current setting. Recorded in the environment either way.
        measure_speed_for: ``"all"``, or ``"first_of_group"`` to time only the first run of
            each group (seeds share the architecture); the others get no speed numbers and
            the group's speed is that of its first run.
        evaluate: False for speed only (no AP; no plot). An entry's own ``metrics`` are
            used instead of evaluating it.
        metric: ``coco``, ``voc`` or ``both``; default each config's ``eval.metric``.
        speed_images: timing cycles over the first this-many images of the split (the
            same images for every model whose config names the same data).
        progress: a progress bar over the models (default: when stderr is a terminal).
        command: the command line to record (default: ``sys.argv``).

    Returns:
        The content of report.json: ``environment``, ``settings``, ``command``, ``date``,
        ``runs`` (one dict per entry: ``params``, ``gflops``, ``metrics``, ``latency``,
        ``throughput``, ``memory``, ``speedup_vs_teacher``...), ``groups`` (aggregates,
        with ``pareto``), ``accuracy_key`` and ``files`` (the paths written).
    """
    from tqdm import tqdm

    from detkd.utils.runtime import resolve_device, show_progress
    from detkd.evaluation.inference import build_eval_data, evaluate_detector

    _check_settings(entries, split, warmup, runs, throughput_batch, threads, measure_speed_for, speed_images)
    if latency_rounds < 1:
        raise DetkdError(f"latency_rounds must be >= 1, got {latency_rounds}")
    dev = resolve_device(device)
    # Fail before any long measurement: every config loads, every checkpoint matches it.
    for entry in entries:
        load_entry(entry)
    gc.collect()

    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        env = profile.environment(dev)
        image_cache: dict[str, list[torch.Tensor]] = {}
        timed_groups: set[str] = set()
        results = []
        to_time: list[tuple[dict[str, Any], Any, list[torch.Tensor]]] = []  # (run, model, images)
        for entry in tqdm(entries, desc="report", disable=not show_progress(progress), dynamic_ncols=True):
            cfg, model = load_entry(entry)
            model.to(dev).eval()
            run: dict[str, Any] = {
                "name": entry.name, "seed": entry.seed, "role": entry.resolved_role, "label": entry.label,
                "config": str(entry.config), "checkpoint": str(entry.checkpoint), "opts": list(entry.opts),
                "params": profile.count_parameters(model), "metrics": None, "metrics_source": None,
                "gflops": None, "latency": None, "throughput": None, "memory": None,
            }
            dataset, loader = build_eval_data(cfg, split)
            if entry.metrics is not None:
                run["metrics"], run["metrics_source"] = dict(entry.metrics), "given"
            elif evaluate:
                run["metrics"] = evaluate_detector(model, loader, dataset, metric or cfg.eval.metric, dev,
                                                   progress=progress)
                run["metrics_source"] = "evaluated"
            if measure_speed_for == "all" or entry.name not in timed_groups:
                timed_groups.add(entry.name)
                key = f"{split}:{getattr(cfg.data, split)!r}:{cfg.data.demo!r}"
                if key not in image_cache:
                    image_cache[key] = [dataset[i][0] for i in range(min(speed_images, len(dataset)))]
                images = image_cache[key]
                flops = profile.count_gflops(model, device=dev, image=images[0])
                run["gflops"], run["gflops_by_module"], run["flops_input_hw"] = (
                    flops["gflops"], flops["by_module"], flops["input_hw"])
                if throughput_batch:
                    run["throughput"] = profile.measure_throughput(
                        model, images, throughput_batch, dev, warmup=math.ceil(warmup / throughput_batch),
                        runs=math.ceil(runs / throughput_batch))
                run["memory"] = profile.peak_memory(model, images, dev)
                # Kept for the side-by-side latency below; off the GPU meanwhile, since CUDA
                # peak memory counts every live tensor.
                to_time.append((run, model.to("cpu") if dev.type == "cuda" else model, images))
            results.append(run)
            del model, cfg, dataset, loader
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        latencies = profile.measure_latency_interleaved([(m, imgs) for _, m, imgs in to_time], dev, warmup=warmup,
                                                        runs=runs, rounds=latency_rounds) if to_time else []
        for (run, _, _), latency in zip(to_time, latencies):
            run["latency"] = latency
        del to_time
    finally:
        torch.set_num_threads(old_threads)

    groups = aggregate_groups(results)
    teacher_ms = _speedups(results, groups)
    key = _accuracy_key(groups)
    plotted = [g for g in groups if key and g.get(f"{key}_mean") is not None and g["latency_median_ms"] is not None]
    front = {plotted[i]["name"] for i in pareto_front([(g["latency_median_ms"], g[f"{key}_mean"]) for g in plotted])}
    for g in groups:
        g["pareto"] = g["name"] in front

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command if command is not None else shlex.join([sys.executable, *sys.argv]),
        "cwd": os.getcwd(),
        "environment": env,
        "settings": {"device": str(dev), "split": split, "warmup": warmup, "runs": runs,
                     "throughput_batch": throughput_batch, "threads": threads, "measure_speed_for": measure_speed_for,
                     "latency_rounds": latency_rounds,
                     "evaluate": evaluate, "metric": metric, "speed_images": speed_images},
        "entries": [dataclasses.asdict(e) for e in entries],
        "runs": results,
        "groups": groups,
        "accuracy_key": key,
        "teacher_latency_ms": teacher_ms,
        "files": {},
    }
    png = _plot(groups, key, env, split) if key else None
    if png is not None:
        atomic_write_bytes(png, out / "report.png")
        report["files"]["png"] = str(out / "report.png")
    elif (out / "report.png").exists():
        (out / "report.png").unlink()  # a stale plot from an earlier report would mislead
    report["files"].update(md=str(out / "report.md"), csv=str(out / "report.csv"), json=str(out / "report.json"))
    atomic_write_text(_csv(results), out / "report.csv")
    atomic_write_text(_markdown(report), out / "report.md")
    report = _json_safe(report)
    atomic_write_text(json.dumps(report, indent=2), out / "report.json")
    return report
