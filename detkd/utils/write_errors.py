"""One-line errors for failed writes of a run's files (full disk, file-size limit, read-only
or forbidden directory): the file, the reason, and the last complete checkpoint."""

from __future__ import annotations

import errno
from pathlib import Path

import torch

from detkd.errors import DetkdError


def os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: torch.save reports a failed write of its file object as a
    RuntimeError ("unexpected pos ...") raised while handling the OSError."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, OSError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def last_complete_checkpoint(output_dir: str | Path) -> str:
    """For error messages: the newest ``last*.pth`` in ``output_dir`` and its iteration."""
    candidates = sorted(Path(output_dir).glob("last*.pth"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not candidates:
        return "none was written yet"
    try:  # mmap: cheap even for a large checkpoint, and no new memory on a struggling machine
        it = torch.load(candidates[0], map_location="cpu", weights_only=False, mmap=True).get("iter")
    except Exception:
        it = None
    return f"{candidates[0]}" + (f" (iteration {it})" if it is not None else "")


def write_error(path: Path, exc: OSError) -> DetkdError:
    """The one-line error of a failed write of ``path`` (ENOSPC, EFBIG, EACCES, EROFS, ...)."""
    reason = exc.strerror or str(exc)
    code = f" [{errno.errorcode.get(exc.errno, exc.errno)}]" if exc.errno else ""
    return DetkdError(f"cannot write {path}: {reason}{code}; the files already there are intact, the last "
                      f"complete checkpoint is {last_complete_checkpoint(path.parent)}")
