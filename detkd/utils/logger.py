"""Run logging: a console + file logger, and a JSON-lines metrics file."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from detkd.errors import DetkdError
from detkd.utils.write_errors import write_error

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


def require_tensorboard(key: str = "train.tensorboard") -> None:
    """A one-line error at start-up, before anything is written, when TensorBoard is asked for
    but the ``tensorboard`` package is missing."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise DetkdError(f"{key} is on but the tensorboard package is not installed: "
                         "pip install 'detkd[tensorboard]' (or pip install tensorboard), or set it to false") from None


def _append(path: Path, data: bytes) -> None:
    """Append ``data`` whole or not at all (a failed write is cut off: no half line)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` (rank 0 only).

    With ``tensorboard``, every numeric field of a record also becomes a TensorBoard scalar
    ``<type>/<field>`` (e.g. ``train/loss_hint``, ``train/lr``, ``train/time``, ``eval/AP50``) at
    step ``record["iter"]``, in an event file in the same directory. A failed append (full disk,
    file-size limit) is a one-line :class:`DetkdError` naming the file."""

    def __init__(self, path: str | Path | None, tensorboard: bool = False) -> None:
        self.path = Path(path) if path is not None else None
        self.tb = None
        if tensorboard and self.path is not None:
            require_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(self.path.parent))

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        line = (json.dumps({k: _clean(v) for k, v in record.items()}) + "\n").encode()
        try:
            _append(self.path, line)
        except OSError as exc:
            raise write_error(self.path, exc) from exc
        if self.tb is not None:
            step = int(record.get("iter", 0))
            for key, value in record.items():
                if key not in ("iter", "type") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(f"{record.get('type', 'train')}/{key}", value, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def format_terms(values: dict[str, float], precision: int = 4) -> str:
    return " ".join(f"{k}={v:.{precision}f}" for k, v in values.items())
