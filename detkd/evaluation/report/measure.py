"""The report's measurements: every :class:`ModelEntry` loaded, scored on its config's
evaluation split with exactly the code of ``tools/eval_det.py``
(:func:`~detkd.evaluation.inference.load_detector`,
:func:`~detkd.evaluation.inference.build_eval_data`,
:func:`~detkd.evaluation.inference.evaluate_detector`), and measured with
:mod:`detkd.evaluation.profile` (parameters, GFLOPs, throughput, peak memory, then the
batch-1 latencies of all timed models side by side). One run dict per entry."""

from __future__ import annotations

import gc
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from detkd.errors import DetkdError
from detkd.evaluation import profile

__all__ = ["ModelEntry", "SPEED_FOR", "Settings", "load_entry", "measure_entries"]

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


@dataclass(frozen=True)
class Settings:
    """How the report measures (report.json's ``settings``; see
    :func:`~detkd.evaluation.report.run_report` for each)."""

    device: str
    split: str
    warmup: int
    runs: int
    throughput_batch: int
    threads: Optional[int]
    measure_speed_for: str
    latency_rounds: int
    evaluate: bool
    metric: Optional[str]
    speed_images: int

    def check(self, entries: Sequence[ModelEntry]) -> None:
        """One-line errors for bad settings and bad or repeated entry names."""
        if not entries:
            raise DetkdError("the report needs at least one model")
        if self.measure_speed_for not in SPEED_FOR:
            raise DetkdError(f"measure_speed_for must be one of {SPEED_FOR}, got '{self.measure_speed_for}'")
        if self.split not in ("val", "train"):
            raise DetkdError(f"split must be 'val' or 'train', got '{self.split}'")
        warmup, runs, throughput_batch, threads = self.warmup, self.runs, self.throughput_batch, self.threads
        speed_images = self.speed_images
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
        if self.latency_rounds < 1:
            raise DetkdError(f"latency_rounds must be >= 1, got {self.latency_rounds}")


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


def measure_entries(entries: Sequence[ModelEntry], settings: Settings, dev: torch.device, progress: Optional[bool],
                    predictions: Optional[dict] = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the environment, one run dict per entry): each entry evaluated and measured in turn
    with ``settings.threads`` torch threads, then the timed ones' latencies side by side;
    ``predictions`` (a dict) receives each evaluated entry's detections by its label."""
    from tqdm import tqdm

    from detkd.utils.runtime import show_progress

    old_threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        env = profile.environment(dev)
        image_cache: dict[str, list[torch.Tensor]] = {}
        timed_groups: set[str] = set()
        results = []
        to_time: list[tuple[dict[str, Any], Any, list[torch.Tensor]]] = []  # (run, model, images)
        for entry in tqdm(entries, desc="report", disable=not show_progress(progress), dynamic_ncols=True):
            run, timed = _measure_entry(entry, settings, dev, progress, image_cache, timed_groups, predictions)
            results.append(run)
            if timed is not None:
                to_time.append((run, *timed))
            del timed
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        latencies = profile.measure_latency_interleaved(
            [(m, imgs) for _, m, imgs in to_time], dev, warmup=settings.warmup, runs=settings.runs,
            rounds=settings.latency_rounds) if to_time else []
        for (run, _, _), latency in zip(to_time, latencies):
            run["latency"] = latency
        del to_time
    finally:
        torch.set_num_threads(old_threads)
    return env, results


def _measure_entry(entry: ModelEntry, s: Settings, dev: torch.device, progress: Optional[bool],
                   image_cache: dict[str, list[torch.Tensor]], timed_groups: set[str], predictions: Optional[dict]):
    """(run dict, (model, images) to time or None): ``entry`` scored (or its given metrics
    taken; ``predictions[entry.label]`` receives its detections, ``run["per_class"]`` its
    per-class COCO APs) and, unless its group is timed already under ``first_of_group``, its GFLOPs,
    throughput and peak memory measured."""
    from detkd.evaluation.inference import build_eval_data, evaluate_detector

    cfg, model = load_entry(entry)
    model.to(dev).eval()
    run: dict[str, Any] = {
        "name": entry.name, "seed": entry.seed, "role": entry.resolved_role, "label": entry.label,
        "config": str(entry.config), "checkpoint": str(entry.checkpoint), "opts": list(entry.opts),
        "params": profile.count_parameters(model), "metrics": None, "metrics_source": None,
        "gflops": None, "latency": None, "throughput": None, "memory": None, "per_class": None,
    }
    dataset, loader = build_eval_data(cfg, s.split)
    if entry.metrics is not None:
        run["metrics"], run["metrics_source"] = dict(entry.metrics), "given"
    elif s.evaluate:
        preds: dict = {}
        per_class: list = []
        run["metrics"] = evaluate_detector(model, loader, dataset, s.metric or cfg.eval.metric, dev, progress=progress,
                                           predictions=preds, per_class=per_class)
        run["metrics_source"], run["per_class"] = "evaluated", per_class
        if predictions is not None:
            predictions[entry.label] = preds
    if s.measure_speed_for != "all" and entry.name in timed_groups:
        return run, None
    timed_groups.add(entry.name)
    key = f"{s.split}:{getattr(cfg.data, s.split)!r}:{cfg.data.demo!r}"
    if key not in image_cache:
        image_cache[key] = [dataset[i][0] for i in range(min(s.speed_images, len(dataset)))]
    images = image_cache[key]
    _measure_speed(run, model, images, s, dev)
    # Kept for the side-by-side latency; off the GPU meanwhile, since CUDA peak memory
    # counts every live tensor.
    return run, (model.to("cpu") if dev.type == "cuda" else model, images)


def _measure_speed(run: dict[str, Any], model: torch.nn.Module, images: list[torch.Tensor], s: Settings,
                   dev: torch.device) -> None:
    """GFLOPs on the first image, throughput (unless ``throughput_batch`` is 0) and the peak
    memory of one batch-1 forward, into ``run``."""
    flops = profile.count_gflops(model, device=dev, image=images[0])
    run["gflops"], run["gflops_by_module"], run["flops_input_hw"] = (
        flops["gflops"], flops["by_module"], flops["input_hw"])
    if s.throughput_batch:
        run["throughput"] = profile.measure_throughput(
            model, images, s.throughput_batch, dev, warmup=math.ceil(s.warmup / s.throughput_batch),
            runs=math.ceil(s.runs / s.throughput_batch))
    run["memory"] = profile.peak_memory(model, images, dev)
