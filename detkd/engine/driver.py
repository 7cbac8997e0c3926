"""The one training driver: the epochs of a run, for detection and classification alike.

detectron2's ``train_loop.py`` idea (``before_step`` / ``run_step`` / ``after_step``) as plain
functions over a :class:`Task`: the task knows its model, data and outputs (detection:
:class:`detkd.engine.detection_task.DetectionTask`, classification:
:class:`detkd.cls.task.ClsTask`); the driver knows *when*: which batches an epoch takes, when
to log, evaluate and checkpoint, and how a signal stops the run. So both kinds of run get the
same SIGINT/SIGTERM stop, ``train.checkpoint_period_iters`` and exact mid-epoch resume, and a
fix to the loop lands once. Setup (building the task, resuming it) stays with each kind
(:mod:`detkd.engine.trainer`, :mod:`detkd.cls.train`), as torchvision splits ``train.py``
from ``engine.py``.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol

from detkd.engine.health import HealthMonitor
from detkd.engine.loop import Position, epoch_batches, epoch_due, log_train_step
from detkd.utils import dist
from detkd.utils.logger import MetricsWriter
from detkd.utils.runtime import show_progress
from detkd.utils.speed import SpeedMeter, format_eta


class Task(Protocol):
    """What the driver asks of a run. ``pos`` is where it stands; the driver advances it."""

    pos: Position

    def start_epoch(self, epoch: int) -> Iterable[Any]:
        """Set ``epoch`` on data and model, train mode; the batches from ``pos.iter_in_epoch`` on."""

    def run_step(self, batch: Any) -> Any | None:
        """One optimizer step (LR schedule included); None when a non-finite loss skipped it."""

    def log_values(self, step: Any) -> Mapping[str, float]:
        """The terms of a step's log line (only asked for on the lines due: may synchronize)."""

    def terms(self, step: Any) -> Mapping[str, Any]:
        """A step's loss terms (tensors or floats) for the health monitor, every step."""

    def lr(self) -> float: ...

    def evaluate(self, epoch: int) -> None: ...

    def save_checkpoint(self, name: str) -> None:
        """``name`` in the output directory: everything an exact resume needs, at ``pos``."""


@dataclass(frozen=True)
class LoopSettings:
    """The ``train.*`` keys the driver reads, and where its log lines go."""

    out: Path
    logger: logging.Logger
    metrics: MetricsWriter
    log_interval: int
    eval_interval: int
    checkpoint_interval: int
    checkpoint_period_iters: int = 0
    progress: bool | None = False
    health: str = "warn"
    health_window: int = 50

    @classmethod
    def of(cls, train: Any, out: Path, logger: logging.Logger, metrics: MetricsWriter,
           progress: bool | None = False) -> "LoopSettings":
        return cls(out, logger, metrics, train.log_interval, train.eval_interval, train.checkpoint_interval,
                   train.checkpoint_period_iters, progress, train.health, train.health_window)


class StopRequest:
    """SIGINT/SIGTERM set a flag; the driver saves a checkpoint at the next iteration boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train_epochs(task: Task, loop: LoopSettings) -> None:
    """The epochs from ``task.pos`` to the plan's last iteration; a signal saves ``last.pth``
    at the iteration boundary and exits with ``128 + signum``."""
    pos = task.pos
    speed = SpeedMeter(pos.iteration, pos.plan.total_iters)
    health = HealthMonitor(loop.health, loop.health_window, loop.logger, loop.metrics)
    with StopRequest() as stop:
        for epoch in range(pos.epoch, pos.plan.epochs):
            train_epoch(task, loop, epoch, speed, stop, health)
            if end_epoch(task, loop, epoch):
                break


def train_epoch(task: Task, loop: LoopSettings, epoch: int, speed: SpeedMeter, stop: StopRequest,
                health: HealthMonitor) -> None:
    """One epoch of steps, each followed by :func:`after_step`."""
    from tqdm import tqdm

    pos = task.pos
    pos.epoch = epoch
    batches = task.start_epoch(epoch)
    bar = tqdm(total=pos.plan.iters_per_epoch, initial=pos.iter_in_epoch, desc=f"epoch {epoch}", leave=False,
               disable=not show_progress(loop.progress), dynamic_ncols=True)
    try:
        for batch in epoch_batches(batches, pos, speed):
            step = task.run_step(batch)
            if step is None:  # a non-finite loss: the step was skipped (train.nonfinite_policy)
                continue
            pos.step_done()
            speed.step_done()
            bar.set_postfix_str(f"eta {format_eta(speed.eta(pos.iteration))}", refresh=False)
            bar.update(1)
            health.observe(pos.iteration, task.terms(step))
            after_step(task, loop, step, speed, stop)
    finally:
        bar.close()


def after_step(task: Task, loop: LoopSettings, step: Any, speed: SpeedMeter, stop: StopRequest) -> None:
    """The log line when due, ``last.pth`` every ``checkpoint_period_iters`` iterations or on
    a signal (then the run exits)."""
    pos = task.pos
    if pos.plan.log_due(pos.iteration, loop.log_interval):
        log_train_step(loop.logger, loop.metrics, pos.epoch, pos.iteration, pos.plan.total_iters, task.lr(),
                       task.log_values(step), speed.interval(pos.iteration))
    period = loop.checkpoint_period_iters
    if stop.signum is not None:
        task.save_checkpoint("last.pth")
        loop.logger.warning("signal %d: saved %s at iteration %d; resume with --resume auto",
                            stop.signum, loop.out / "last.pth", pos.iteration)
        dist.cleanup()
        raise SystemExit(128 + stop.signum)
    if period and pos.iteration % period == 0:
        # Mid-epoch position: a killed run loses at most `period` iterations.
        task.save_checkpoint("last.pth")


def end_epoch(task: Task, loop: LoopSettings, epoch: int) -> bool:
    """Evaluate and checkpoint when due; True when the run's last iteration is done."""
    pos = task.pos
    done = pos.done
    # The position a checkpoint records: the next epoch, or (stopped by max_iters mid-epoch) this one.
    if pos.iter_in_epoch >= pos.plan.iters_per_epoch or not done:
        pos.epoch, pos.iter_in_epoch = epoch + 1, 0
    if epoch_due(epoch, loop.eval_interval, done):
        task.evaluate(epoch)
    if epoch_due(epoch, loop.checkpoint_interval, done):
        task.save_checkpoint("last.pth")
    return done
