"""Durable file system steps shared by the queue, the Maildir agent and makemap.

A rename is durable only once its directory is fsynced (the file's own
fsync does not cover its name): every "write aside, fsync, rename" in
Postillion ends with `fsync_dir`.  A leaf module: anyone may import it.
"""

from __future__ import annotations

import os
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
