"""One daemon per spool: an exclusive lock taken before anything else.

Two daemons on one spool would each schedule every envelope (every message
delivered twice), and the second would remove the first's in-flight
`incoming/` files as never-acknowledged leftovers.  So the daemon takes
`flock(LOCK_EX)` on `<spool>/postillion.pid` before it opens a table, binds a
port or reads the queue, and writes its pid there for the refusal message
(and for administrators' scripts).  The kernel drops the lock when the
holder dies, however it dies: a stale pid file never blocks a restart.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Final

from postillion.queue import layout

PID_FILE: Final = "postillion.pid"


class SpoolBusy(Exception):
    """Another daemon holds the spool; the message names it and its pid."""


class SpoolLock:
    """Held from `acquire` until `release` or the process's death."""

    def __init__(self, spool: Path) -> None:
        self.path = spool / PID_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Lock the spool or raise SpoolBusy; OSError if it cannot be made."""
        self.path.parent.mkdir(mode=layout.DIR_MODE, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise SpoolBusy(f"queue {self.path.parent} is in use by another postillion "
                            f"(pid {holder}); refusing to start a second daemon on it") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)    # closing drops the lock
            self._fd = None
