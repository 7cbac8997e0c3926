"""Crash-safe checkpoints.

A checkpoint is written to a temporary file in the same directory, flushed and fsynced,
then atomically renamed over the old one, so a killed process leaves either the previous
complete file or the new complete file, never a torn one. The ``model`` entry is a plain
torchvision ``FasterRCNN`` state dict: ``FasterRCNN(...).load_state_dict(ckpt["model"])``
works without detkd.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import torch

from detkd.errors import DetkdError
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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DetkdError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise DetkdError(f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        raise DetkdError(f"{path} holds weights only (a plain state dict, no optimizer state); "
                         f"resume from last.pth, or start from these weights with model.weights={path}")
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise DetkdError(f"{path} is not a detkd checkpoint (no 'model' entry)")
    return ckpt


def remove_stale_temp_files(output_dir: str | Path) -> list[Path]:
    """Delete the temporary files of writes that a killed process never finished (each may
    be as large as a checkpoint). Call only while no other process writes ``output_dir``."""
    stale = sorted(Path(output_dir).glob(".*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """``--resume auto``: the newest readable training checkpoint in ``output_dir``; None when
    there is no ``last*.pth`` at all.

    Raises DetkdError when every ``last*.pth`` is unreadable or holds weights only: starting
    from scratch there would silently overwrite them, and the user should decide."""
    candidates = sorted(Path(output_dir).glob("last*.pth"), key=lambda p: p.stat().st_mtime, reverse=True)
    problems = []
    for path in candidates:
        try:
            ckpt = load_checkpoint(path)
        except DetkdError as exc:
            problems.append(str(exc))
            continue
        if "optimizer" in ckpt:
            return path
        problems.append(f"{path} holds weights only (no optimizer state)")
    if problems:
        raise DetkdError(f"--resume auto: no usable checkpoint in {output_dir} ({'; '.join(problems)}); "
                         "move the file(s) away to start from scratch, or pass --resume PATH")
    return None
