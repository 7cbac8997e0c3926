"""Training health: the loss terms of every step watched for the failures that otherwise show only
after a run (``train.health: warn | stop | off``, default warn; detection and classification alike).

Over each window of ``train.health_window`` steps (default 50), per term:

* **stuck**: the term is a non-zero constant (spread ``max - min`` at most 1e-6 of its mean): no
  gradient reaches what it measures (torchvision FCOS's ReLU'd box outputs pushed to 0 give a GIoU
  loss of exactly 1; a frozen or disconnected module).
* **zero**: the term is exactly 0 on every step: a box loss without any positive sample (anchor sizes
  or FCOS scale ranges that match no box), a distillation term that matches nothing.
* **exploding**: the term's median over the window is 1000 times its median over the first window.

Each (check, term) is reported once, as one log line that names the term and says what to try,
and a ``{"type": "health", ...}`` record in ``metrics.jsonl``; ``stop`` ends the run with that line.
The cost is one list of floats per step (the terms are already on the host for the non-finite check)
and a few comparisons per term and window.
"""

from __future__ import annotations

import logging
import statistics
from collections import deque
from typing import Any, Mapping

import torch

from detkd.errors import DetkdError
from detkd.utils.logger import MetricsWriter

__all__ = ["HealthMonitor", "window_problems"]

STUCK_SPREAD = 1e-6  # relative: float noise of a live term is far above it
EXPLODE_FACTOR = 1e3

_BOX_WORDS = ("box", "bbox", "reg")


def _zero_hint(term: str) -> str:
    if "bound" in term:  # Chen et al.'s teacher-bounded regression
        return ("the teacher bound never activates: the student already regresses better than the teacher "
                "on every positive")
    if any(w in term for w in _BOX_WORDS):
        return ("no anchor or point matched a ground-truth box: check the anchor sizes (model.anchor_sizes), "
                "FCOS's scale ranges against your box sizes, and model.min_size")
    return "it matches nothing: for a distillation term, check that the teacher checkpoint is the trained one"


def window_problems(term: str, values: list[float], first_median: float | None) -> list[tuple[str, str]]:
    """``(check, message)`` of one term over one full window of finite values."""
    low, high = min(values), max(values)
    mean = sum(values) / len(values)
    found = []
    if high == 0.0 and low == 0.0:
        found.append(("zero", f"loss term '{term}' has been 0 for {len(values)} iterations: {_zero_hint(term)}"))
    elif high - low <= STUCK_SPREAD * abs(mean):
        found.append(("stuck", f"loss term '{term}' has stayed at {mean:.6g} for {len(values)} iterations: no "
                               "gradient reaches what it measures (a dead ReLU output such as torchvision FCOS's "
                               "box branch, a frozen or disconnected module); try another init or a lower "
                               "learning rate"))
    if first_median is not None and first_median > 0:
        median = statistics.median(values)
        if median > EXPLODE_FACTOR * first_median:
            found.append(("exploding", f"loss term '{term}' grew from {first_median:.4g} to {median:.4g} (median "
                                       f"over {len(values)} iterations): lower train.optimizer.lr or set "
                                       "train.clip_grad_norm"))
    return found


class HealthMonitor:
    """Watches the loss terms step by step (see the module docs)."""

    def __init__(self, mode: str, window: int, logger: logging.Logger, metrics: MetricsWriter) -> None:
        self.mode, self.window, self.logger, self.metrics = mode, window, logger, metrics
        self.values: dict[str, deque] = {}
        self.first: dict[str, float] = {}
        self.reported: set[tuple[str, str]] = set()

    def observe(self, iteration: int, terms: Mapping[str, Any]) -> None:
        """Record one step's terms (tensors or floats); check each full window."""
        if self.mode == "off" or not terms:
            return
        names = list(terms)
        raw = list(terms.values())
        if any(isinstance(v, torch.Tensor) for v in raw):
            raw = torch.stack([torch.as_tensor(v).detach().float().reshape(()).cpu() for v in raw]).tolist()
        for name, value in zip(names, raw):
            window = self.values.setdefault(name, deque(maxlen=self.window))
            window.append(float(value))
            if len(window) == self.window and iteration % self.window == 0:
                self._check(iteration, name, list(window))

    def _check(self, iteration: int, name: str, values: list[float]) -> None:
        if not all(v == v and abs(v) != float("inf") for v in values):
            return  # non-finite steps are the non-finite guard's
        for check, message in window_problems(name, values, self.first.get(name)):
            if (check, name) in self.reported:
                continue
            self.reported.add((check, name))
            self.metrics.write({"type": "health", "iter": iteration, "check": check, "term": name,
                                "message": message})
            if self.mode == "stop":
                raise DetkdError(f"train.health: stop: {message}")
            self.logger.warning("health: %s", message)
        self.first.setdefault(name, statistics.median(values))
