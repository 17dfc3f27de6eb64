"""Giving up root, and dying with the parent: what every child process does.

A leaf module (docs/architecture.md): the delivery workers and the daemon's
roles use the same two steps, in the same order -- drop to the unprivileged
uid/gid first (which clears a parent-death signal), then ask the kernel for
SIGKILL when the parent dies.
"""

from __future__ import annotations

import ctypes
import os
import signal
from typing import Final

_PR_SET_PDEATHSIG: Final = 1


def drop_privileges(uid: int, gid: int) -> None:
    """setgroups, setgid, setuid -- in that order, and verified."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid:
        raise PermissionError("privilege drop did not take")


def die_with_parent(parent: int, status: int = 75) -> None:
    """SIGKILL when `parent` dies; exit with `status` now if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:
        os._exit(status)
