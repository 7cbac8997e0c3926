"""Run logging: a console + file logger, and a JSON-lines metrics file."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class _TqdmHandler(logging.StreamHandler):
    """Writes through tqdm so log lines do not break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # pragma: no cover - logging must never crash training
            self.handleError(record)


class _PendingFile(logging.Handler):
    """Holds records until :func:`open_log_file`, so a run refused by its start-up checks
    leaves ``log.txt`` (and the output directory) untouched."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def setup_logging(output_dir: str | Path | None = None, main_process: bool = True,
                  level: int = logging.INFO, defer_file: bool = False) -> logging.Logger:
    """Console logging, plus ``output_dir/log.txt`` (appended). With ``defer_file`` the
    file is only created by :func:`open_log_file`, which writes the held-back lines first."""
    logger = logging.getLogger("detkd")
    logger.setLevel(level if main_process else logging.WARNING)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    console = _TqdmHandler()
    console.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    logger.addHandler(console)
    if output_dir is not None and main_process:
        if defer_file:
            logger.addHandler(_PendingFile(Path(output_dir) / "log.txt"))
        else:
            _add_file_handler(logger, Path(output_dir) / "log.txt")
    return logger


def _add_file_handler(logger: logging.Logger, path: Path) -> logging.FileHandler:
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(path)
    fh.setFormatter(logging.Formatter(_FORMAT))
    logger.addHandler(fh)
    return fh


def open_log_file(logger: logging.Logger) -> None:
    """Start the ``log.txt`` deferred by ``setup_logging(defer_file=True)`` (no-op otherwise)."""
    for pending in [h for h in logger.handlers if isinstance(h, _PendingFile)]:
        logger.removeHandler(pending)
        fh = _add_file_handler(logger, pending.path)
        for record in pending.records:
            fh.handle(record)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` (rank 0 only)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
            f.flush()


def format_terms(values: dict[str, float], precision: int = 4) -> str:
    return " ".join(f"{k}={v:.{precision}f}" for k, v in values.items())
