"""Seconds per iteration, data-loading share and ETA for the training log.

``time`` is wall-clock seconds per iteration between two log lines (whatever happened in
between: epoch boundaries, loader start-up, checkpoints, evaluation), so it agrees with the
log's own timestamps. ``data_time`` is the part of it spent waiting for the loader's next batch
(as detectron2 reports it: the time from the end of one step to the arrival of the next
batch). The ETA divides the time since this process started training by the iterations it has
done, times the iterations left.
"""

from __future__ import annotations

import datetime
import math
import time


def format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(seconds)))) if math.isfinite(seconds) else "?"


class SpeedMeter:
    """Call :meth:`epoch_start` before iterating the loader, :meth:`batch_ready` when a batch
    arrives, :meth:`step_done` after the optimizer step, and :meth:`interval` at each log line."""

    def __init__(self, start_iter: int, total_iters: int, clock=time.perf_counter) -> None:
        self.clock = clock
        self.total_iters = total_iters
        self.t0 = self.t_log = self._last = clock()
        self.start_iter = self.it_log = start_iter
        self.data = 0.0  # seconds waiting on the loader since the last log line

    def epoch_start(self) -> None:
        self._last = self.clock()  # the time between epochs (evaluation, checkpoint) is no data wait

    def batch_ready(self) -> None:
        now = self.clock()
        self.data += now - self._last
        self._last = now

    def step_done(self) -> None:
        self._last = self.clock()

    def eta(self, it: int) -> float:
        done = it - self.start_iter
        if done <= 0:
            return float("nan")
        return (self.clock() - self.t0) / done * max(self.total_iters - it, 0)

    def interval(self, it: int) -> dict[str, float]:
        """``time``, ``data_time`` (s/it) and ``eta_seconds`` since the last call (or the start)."""
        now = self.clock()
        n = max(it - self.it_log, 1)
        fields = {"time": (now - self.t_log) / n, "data_time": self.data / n, "eta_seconds": self.eta(it)}
        self.t_log, self.it_log, self.data = now, it, 0.0
        return fields


def format_speed(fields: dict[str, float]) -> str:
    """``1.234 s/it, data 0.050 s/it (4%), eta 0:01:23`` for a log line."""
    share = 100.0 * fields["data_time"] / fields["time"] if fields["time"] > 0 else 0.0
    return (f"{fields['time']:.3f} s/it, data {fields['data_time']:.3f} s/it ({share:.0f}%), "
            f"eta {format_eta(fields['eta_seconds'])}")
