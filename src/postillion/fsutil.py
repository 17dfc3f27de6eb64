"""Durable file system steps shared by the queue, the Maildir agent and makemap.

A rename is durable only once its directory is fsynced (the file's own
fsync does not cover its name): every "write aside, fsync, rename" in
Postillion ends with `fsync_dir`.  A leaf module: anyone may import it.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Callable


def fsync_dir(path: str | os.PathLike[str], fsync: Callable[[int], None] = os.fsync) -> None:
    """fsync a directory, so the names created or renamed in it survive a crash.

    `fsync` is a seam: the queue's tests make it fail to prove nothing is
    acknowledged without it.
    """
    fd = os.open(os.fspath(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], None] | None:
    """Linux's syncfs(2), or None where the platform lacks it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.syncfs
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int]

    def syncfs(fd: int) -> None:
        if call(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))

    return syncfs


#: syncfs(fd): flush every dirty page and inode of the file system holding
#: fd, in one journal commit.  One call makes a whole batch of queue files
#: durable (measured here: a 20-message batch in 10 ms instead of 70 ms with
#: one fsync per file and directory).  It reports write-back errors since
#: Linux 5.8.  None off Linux: callers fall back to fsync per file.
SYNCFS: Callable[[int], None] | None = _load_syncfs()
