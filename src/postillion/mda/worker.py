"""The privilege-dropped delivery worker: `python -m postillion.mda.worker`.

When the daemon runs as root it never delivers as root.  It starts long-lived
workers per recipient uid/gid: each is exec'd as root (so it can import
Python from wherever it is installed, even a 0700 home), imports all it
needs, then drops to the uid/gid with no supplementary groups before it
reads its first job.  Nothing is exec'd after that and no envelope data goes
near a shell.

A job arrives on the worker's channel (a SOCK_SEQPACKET socketpair) as one
small JSON frame with descriptors attached (SCM_RIGHTS):

* the queued message, opened read-only by the daemon: the worker never sees
  the spool, only the one message it delivers;
* an *anchor*: the deepest directory of the Maildir's path whose every
  component belongs to root, opened (O_PATH) by the daemon.  The worker
  resolves the rest of the path from there, as the recipient, so a mail
  store may live under a directory the recipient cannot traverse (a
  checkout in root's 0700 home, as `make run` by root has) while every
  directory the recipient owns is still resolved with the recipient's
  permissions -- root never follows a link the recipient could plant.

The worker answers with one frame `{"status": N, "reason": "..."}`: status 0
delivered, 75 (EX_TEMPFAIL) temporary, anything else permanent -- sysexits,
as for an mda command.

A worker dies with the daemon: it asks the kernel for SIGKILL when its
parent dies (PR_SET_PDEATHSIG, set after the privilege drop, which would
clear it), checks that the parent is still the one that started it, and
exits on EOF of its channel.  A restarted daemon never finds an old worker
still delivering.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Final

from postillion.mda.maildir import deliver
from postillion.privileges import die_with_parent, drop_privileges

EX_OK: Final = 0
EX_TEMPFAIL: Final = 75
EX_PERM: Final = 1
PERMANENT_ERRNOS: Final = frozenset({errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP})

#: Largest frame either side sends: a job is a path and two header lines.
MAX_FRAME: Final = 64 * 1024
#: Descriptors a job carries: the message, and the anchor directory.
MAX_FDS: Final = 2

def os_error_result(e: OSError, where: str) -> tuple[int, str]:
    """A delivery's OSError as (status, reason): a path that can never work
    is permanent, everything else (EACCES, ENOSPC, EDQUOT...) temporary."""
    reason = f"{e.strerror or e}: {e.filename or where}"
    return (EX_PERM if e.errno in PERMANENT_ERRNOS else EX_TEMPFAIL), reason


def deliver_job(root: str, prefix: bytes, message_fd: int, anchor_fd: int | None,
                name: str | None = None) -> tuple[int, str]:
    """Deliver one message into one Maildir, already running as the user.

    With an anchor, `root` is relative to it: the worker changes into the
    anchor and resolves the rest as itself."""
    if os.geteuid() == 0:
        return EX_TEMPFAIL, "refusing to deliver as root"
    try:
        if anchor_fd is not None:
            os.fchdir(anchor_fd)
        with os.fdopen(message_fd, "rb", closefd=False) as source:
            deliver(Path(root), prefix, source, name)
    except OSError as e:
        return os_error_result(e, root)
    finally:
        if anchor_fd is not None:
            os.chdir("/")
    return EX_OK, "Delivered"


def decode_job(data: bytes) -> tuple[str, bytes, str | None]:
    job = json.loads(data)
    name = job.get("name")
    return (str(job["root"]), str(job["prefix"]).encode("utf-8", "surrogateescape"),
            None if name is None else str(name))


def encode_job(root: str, prefix: bytes, name: str | None = None) -> bytes:
    return json.dumps({"root": root, "prefix": prefix.decode("utf-8", "surrogateescape"),
                       "name": name}).encode()


def serve(channel: socket.socket) -> None:
    """Answer jobs until the channel closes."""
    while True:
        data, fds, _flags, _addr = socket.recv_fds(channel, MAX_FRAME, MAX_FDS)
        if not data:
            return                       # EOF: the daemon is gone or retired us
        try:
            root, prefix, name = decode_job(data)
            if not fds:
                result = (EX_TEMPFAIL, "job without its message")
            else:
                result = deliver_job(root, prefix, fds[0], fds[1] if len(fds) > 1 else None, name)
        except (ValueError, KeyError, TypeError):
            result = (EX_TEMPFAIL, "malformed job frame")
        finally:
            for fd in fds:
                os.close(fd)
        channel.sendall(json.dumps({"status": result[0], "reason": result[1]}).encode())


def main(argv: list[str]) -> int:
    """`worker FD PARENT_PID UID GID`: drop to UID/GID, then serve FD."""
    fd, parent, uid, gid = (int(a) for a in argv)
    if uid == 0 or gid == 0:
        return EX_TEMPFAIL               # never a delivery as root
    channel = socket.socket(fileno=fd)
    if os.geteuid() == 0:
        drop_privileges(uid, gid)
    die_with_parent(parent, EX_TEMPFAIL)
    os.chdir("/")
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the daemon's ^C is the daemon's
    try:
        serve(channel)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
