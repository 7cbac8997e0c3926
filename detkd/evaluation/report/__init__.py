"""Speed/accuracy report: several detectors side by side.

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

All files are written atomically. Three modules, one per stage: ``measure.py`` (load,
evaluate and time the entries: one run dict each), ``aggregate.py`` (groups over seeds,
speed-ups, the Pareto front) and ``render.py`` (the four files).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from detkd.evaluation.report.aggregate import (
    REPORT_METRICS, accuracy_key, aggregate_groups, mark_pareto, pareto_front, set_speedups,
)
from detkd.evaluation.report.measure import SPEED_FOR, ModelEntry, Settings, load_entry, measure_entries
from detkd.evaluation.report.render import write_report

__all__ = ["ModelEntry", "REPORT_METRICS", "SPEED_FOR", "aggregate_groups", "load_entry", "pareto_front", "run_report"]


def run_report(entries: Sequence[ModelEntry], out_dir: str | Path, *, device: str = "cpu", split: str = "val",
               warmup: int = 10, runs: int = 50, throughput_batch: int = 8, threads: Optional[int] = None,
               measure_speed_for: str = "all", evaluate: bool = True, metric: Optional[str] = None,
               speed_images: int = 32, latency_rounds: int = 5, progress: Optional[bool] = None,
               command: Optional[str] = None, predictions: Optional[dict] = None) -> dict[str, Any]:
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
        predictions: a dict that receives every evaluated entry's detections on the split,
            ``{label: {image_id: {"boxes", "scores", "labels"}}}`` (for the pictures of
            :func:`detkd.deploy.page.report_page`).

    Returns:
        The content of report.json: ``environment``, ``settings``, ``command``, ``date``,
        ``runs`` (one dict per entry: ``params``, ``gflops``, ``metrics``, ``latency``,
        ``throughput``, ``memory``, ``speedup_vs_teacher``, ``per_class``...), ``groups`` (aggregates,
        with ``pareto``), ``accuracy_key`` and ``files`` (the paths written).
    """
    from detkd.utils.runtime import resolve_device

    settings = Settings(device, split, warmup, runs, throughput_batch, threads, measure_speed_for, latency_rounds,
                        evaluate, metric, speed_images)
    settings.check(entries)
    dev = resolve_device(device)
    settings = dataclasses.replace(settings, device=str(dev))
    # Fail before any long measurement: every config loads, every checkpoint matches it.
    for entry in entries:
        load_entry(entry)
    gc.collect()
    env, results = measure_entries(entries, settings, dev, progress, predictions)

    groups = aggregate_groups(results)
    teacher_ms = set_speedups(results, groups)
    key = accuracy_key(groups)
    mark_pareto(groups, key)
    report: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command if command is not None else shlex.join([sys.executable, *sys.argv]),
        "cwd": os.getcwd(),
        "environment": env,
        "settings": dataclasses.asdict(settings),
        "entries": [dataclasses.asdict(e) for e in entries],
        "runs": results,
        "groups": groups,
        "accuracy_key": key,
        "teacher_latency_ms": teacher_ms,
        "files": {},
    }
    return write_report(report, Path(out_dir))
