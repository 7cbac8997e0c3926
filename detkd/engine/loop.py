"""The pieces both training loops (detection: :mod:`detkd.engine.trainer`, classification:
:mod:`detkd.cls.train`) share: iteration maths, when to log / evaluate / checkpoint, the log
line, and the policy for a non-finite loss.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from detkd.errors import DetkdError
from detkd.utils.logger import MetricsWriter, format_terms
from detkd.utils.speed import format_speed


@dataclass(frozen=True)
class IterationPlan:
    """``total_iters`` = ``epochs * iters_per_epoch``, cut at ``max_iters``; ``epochs`` is then
    the number of (possibly partial) epochs those iterations span."""

    iters_per_epoch: int
    total_iters: int
    epochs: int

    @classmethod
    def of(cls, iters_per_epoch: int, epochs: int, max_iters: int | None) -> "IterationPlan":
        total = epochs * iters_per_epoch
        if max_iters is not None:
            total = min(total, max_iters)
        return cls(iters_per_epoch, total, math.ceil(total / iters_per_epoch))

    def log_due(self, iteration: int, interval: int) -> bool:
        """A log line every ``interval`` iterations, and at the last one."""
        return iteration % interval == 0 or iteration == self.total_iters


def epoch_due(epoch: int, interval: int, done: bool) -> bool:
    """Evaluate / checkpoint after every ``interval``-th epoch (0: never) and at the end."""
    return done or bool(interval and (epoch + 1) % interval == 0)


def log_train_step(logger: logging.Logger, metrics: MetricsWriter, epoch: int, iteration: int, total_iters: int,
                   lr: float, values: Mapping[str, float], timing: Mapping[str, float]) -> None:
    """The log line (every term, honest timings) and its ``metrics.jsonl`` record."""
    logger.info("epoch %d iter %d/%d lr %.5f %s (%s)", epoch, iteration, total_iters, lr, format_terms(values),
                format_speed(timing))
    metrics.write({"type": "train", "epoch": epoch, "iter": iteration, "lr": lr, **values, **timing})


class NonFiniteGuard:
    """``train.nonfinite_policy``: a step whose loss is NaN/inf is skipped (its gradients
    dropped, the weights untouched), up to ``max_skips`` times in a row, or ("stop") the run
    stops at once with a one-line error. Either way the skip is logged and recorded."""

    def __init__(self, policy: str, max_skips: int, output_dir: Any, logger: logging.Logger,
                 metrics: MetricsWriter) -> None:
        self.policy, self.max_skips = policy, max_skips
        self.output_dir, self.logger, self.metrics = output_dir, logger, metrics
        self.streak = 0

    def skip(self, terms: Mapping[str, torch.Tensor], total: torch.Tensor, iteration: int) -> bool:
        """True when the step must be skipped; raises DetkdError when the policy says stop."""
        if bool(torch.isfinite(total)):
            self.streak = 0
            return False
        bad = [k for k, v in terms.items() if not bool(torch.isfinite(v).all())] or ["loss"]
        self.streak += 1
        self.logger.warning("non-finite loss at iteration %d in %s", iteration, ", ".join(bad))
        self.metrics.write({"type": "nonfinite", "iter": iteration, "terms": bad})
        if self.policy == "stop" or self.streak > self.max_skips:
            raise DetkdError(f"non-finite loss in {', '.join(bad)} at iteration {iteration}; "
                             f"stopped (the last checkpoint in {self.output_dir} is intact)")
        return True
