"""The privilege-dropped delivery worker.

When the daemon runs as root it never delivers as root: each delivery runs
in a fresh process forked from a fork server (a separately exec'd, single-
threaded Python, so no lock of the daemon's threads is inherited), which opens the
queued message as root (the queue stays 0700), then drops to the recipient's
uid/gid with no supplementary groups, and only then touches the Maildir.  A
process serves one delivery and exits, so a dropped privilege is never
reused.  Nothing is exec'd: the recipient's uid needs no access to the
Python installation, and no envelope data goes near a shell.

Most messages are small, and forking a fresh process per delivery costs
~20 ms of CPU: so a message up to `INLINE_MAX` is read by the daemon and
handed to a long-lived worker that dropped to that uid/gid once, at its
start (`become`), and never had root's files open.  Larger messages take
the fork-per-delivery path above, which streams from the queue file.

Results come back as (status, reason): status 0 delivered, 75 (EX_TEMPFAIL)
temporary, anything else permanent -- sysexits, as for an mda command.
"""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

from postillion.mda.maildir import deliver

EX_OK = 0
EX_TEMPFAIL = 75
EX_PERM = 1
PERMANENT_ERRNOS = frozenset({errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP})


def drop_privileges(uid: int, gid: int) -> None:
    """setgroups, setgid, setuid -- in that order, and verified."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid:
        raise PermissionError("privilege drop did not take")


def become(uid: int, gid: int) -> None:
    """Initializer of a long-lived worker: drop to uid/gid for good."""
    if uid == 0 or gid == 0:
        raise PermissionError("refusing to run a delivery worker as root")
    if os.geteuid() == 0:
        drop_privileges(uid, gid)
    os.chdir("/")


def deliver_maildir_bytes(root: str, prefix: bytes, message: bytes) -> tuple[int, str]:
    """Runs in a long-lived worker already running as the user."""
    if os.geteuid() == 0:
        return EX_TEMPFAIL, "refusing to deliver as root"
    try:
        deliver(Path(root), prefix, io.BytesIO(message))
    except OSError as e:
        reason = f"{e.strerror or e}: {e.filename or root}"
        return (EX_PERM if e.errno in PERMANENT_ERRNOS else EX_TEMPFAIL), reason
    return EX_OK, "Delivered"


def deliver_maildir_as(uid: int, gid: int, message: str, root: str, prefix: bytes) -> tuple[int, str]:
    """Runs in the worker process: deliver one message into one Maildir."""
    if uid == 0 or gid == 0:
        return EX_TEMPFAIL, "refusing to deliver as root"
    try:
        with open(message, "rb") as source:
            if os.geteuid() == 0:
                drop_privileges(uid, gid)
            os.chdir("/")
            deliver(Path(root), prefix, source)
    except OSError as e:
        reason = f"{e.strerror or e}: {e.filename or root}"
        return (EX_PERM if e.errno in PERMANENT_ERRNOS else EX_TEMPFAIL), reason
    return EX_OK, "Delivered"
