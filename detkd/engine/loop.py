"""The pieces of the training driver (:mod:`detkd.engine.driver`) and of the steps of both
kinds of run: iteration maths, where a run stands, an epoch's batches, when to evaluate /
checkpoint, the log line, and the policy for a non-finite loss (called inside a task's step).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

import torch

from detkd.errors import DetkdError
from detkd.utils.logger import MetricsWriter, format_terms
from detkd.utils.speed import SpeedMeter, format_speed

Batch = TypeVar("Batch")


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


@dataclass
class Position:
    """Where a run stands in its :class:`IterationPlan`: ``iteration`` optimizer steps done,
    ``iter_in_epoch`` of them in ``epoch`` (the epoch running, or the next one to run once an
    epoch is finished)."""

    plan: IterationPlan
    epoch: int = 0
    iteration: int = 0
    iter_in_epoch: int = 0

    @property
    def done(self) -> bool:
        return self.iteration >= self.plan.total_iters

    def step_done(self) -> None:
        self.iteration += 1
        self.iter_in_epoch += 1


def epoch_batches(loader: Iterable[Batch], position: Position, speed: SpeedMeter) -> Iterator[Batch]:
    """One epoch of ``loader`` up to the plan's last iteration, each batch's wait timed by
    ``speed`` (the caller marks ``speed.step_done()`` after each step it takes)."""
    speed.epoch_start()
    for batch in loader:
        if position.done:
            return
        speed.batch_ready()
        yield batch


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
