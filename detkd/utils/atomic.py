"""Crash-safe writes: a file is written to a temporary file in the same directory, flushed
and fsynced, then atomically renamed over the old one, so a killed process leaves either the
previous complete file or the new complete file, never a torn one. A failed write (full disk,
read-only directory) is a one-line error and the old file is kept.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import torch

from detkd.utils.write_errors import os_error, write_error

# mkstemp creates files 0600; give outputs the permissions a plain open() would (read at
# import, while single-threaded: os.umask can only be read by setting it).
_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic_write(path: str | Path, write: Callable[[IO], None], mode: str) -> None:
    """Write through ``write`` to a temporary file beside ``path``, fsync, then rename.

    A failed write (full disk, file-size limit, read-only or forbidden directory) removes the
    temporary file and raises :func:`write_error`; ``path`` keeps its previous content."""
    path = Path(path)
    try:
        _atomic_write_or_raise(path, write, mode)
    except Exception as exc:
        os_exc = os_error(exc)
        if os_exc is None:
            raise
        raise write_error(path, os_exc) from exc


def _atomic_write_or_raise(path: Path, write: Callable[[IO], None], mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        # Make the rename itself durable.
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a torn file at ``path``."""
    _atomic_write(path, lambda f: torch.save(obj, f), "wb")


def atomic_write_text(text: str, path: str | Path) -> None:
    _atomic_write(path, lambda f: f.write(text), "w")


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    _atomic_write(path, lambda f: f.write(data), "wb")
