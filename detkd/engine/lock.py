"""An exclusive lock on a run's output directory, so two runs never write the same files.

The lock is ``fcntl.flock`` on ``output_dir/.lock``: the kernel releases it when its holder
dies (SIGKILL, OOM killer, crash), so a stale file never blocks a later run; only the OS lock
decides, never the file's existence. The file holds the holder's pid and host (for the error
message) and is removed when the holder releases the lock.

A holder unlinks the file while it still holds the lock; a process that opened the old file
and locked it after that finds the path missing or pointing at a newer file, and tries again
(``_lock_path_file``), so two processes can never both believe they hold the directory.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path

from detkd.errors import DetkdError

LOCK_NAME = ".lock"

# A forked child (a DataLoader worker) shares the lock's open file: a flock is only released
# when every descriptor of it is closed, so a worker outliving a SIGKILLed trainer would keep
# the directory locked. Children close their copies at once (close only: LOCK_UN would release
# the parent's lock too).
_HELD: set[int] = set()


def _close_in_child() -> None:
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "a process that is still starting"


class RunLock:
    """``with RunLock(output_dir):`` holds ``output_dir`` for the block (see the module doc).

    ``enabled=False`` (ranks other than 0 under torchrun) makes it a no-op. On release the lock
    file goes, and so does the directory when this lock created it and nothing else was written
    there (a run refused by its start-up checks leaves no trace)."""

    def __init__(self, output_dir: str | Path, enabled: bool = True) -> None:
        self.dir = Path(output_dir)
        self.path = self.dir / LOCK_NAME
        self.enabled = enabled
        self.fd: int | None = None
        self.created_dir = False

    def acquire(self) -> None:
        if not self.enabled or self.fd is not None:
            return
        self.created_dir = not self.dir.exists()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.fd = _lock_path_file(self.path)
        except OSError as exc:
            raise DetkdError(f"cannot lock output directory {self.dir}: {exc.strerror or exc}") from None
        if self.fd is None:
            raise DetkdError(f"output directory {self.dir} is in use by another run ({_holder(self.path)}); "
                             "wait for it to end, or choose another output_dir")
        _HELD.add(self.fd)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: see the module doc
        finally:
            _HELD.discard(self.fd)
            os.close(self.fd)
            self.fd = None
        if self.created_dir:
            try:
                self.dir.rmdir()  # only succeeds when empty
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock_path_file(path: Path) -> int | None:
    """An fd holding ``flock(LOCK_EX)`` on the file now at ``path``; None when another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                return None
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # locked a file its holder had just removed: lock the current one
