"""The privilege-dropped delivery worker: `python -m postillion.mda.worker`.

When the daemon runs as root it never delivers as root.  It starts long-lived
workers per recipient uid/gid: each is exec'd as root (so it can import
Python from wherever it is installed, even a 0700 home), imports all it
needs, then drops to the uid/gid with no supplementary groups, sets umask
077 and its resource limits (no core dumps; `max_file_size` as
RLIMIT_FSIZE, hard, so nothing it runs can raise it) before it reads its
first job.  No envelope data ever goes near a shell: an `mda` command is
exec'd as a list of words (`command.py`).

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

A job names its method: `maildir` (the message and the anchor), `mbox`
(the message and the user's system mailbox, created, checked and dot-locked
by the daemon as root: the mail spool is not the user's to write), `file`
(the message and an anchor: an mbox file an alias target names, resolved,
locked and written as the user), `mda` (the message: a command's words and
environment, run by `command.run`).

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
import resource
import signal
import socket
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Any, BinaryIO, Final

from postillion.mda import command, mbox
from postillion.mda.maildir import deliver
from postillion.privileges import die_with_parent, drop_privileges

EX_OK: Final = 0
EX_TEMPFAIL: Final = 75
EX_PERM: Final = 1
PERMANENT_ERRNOS: Final = frozenset({errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP})

#: Largest frame either side sends: a job is a path or a command's words,
#: its environment and two header lines.
MAX_FRAME: Final = 64 * 1024
#: Descriptors a job carries: the message, and the anchor directory.
MAX_FDS: Final = 2

def os_error_result(e: OSError, where: str) -> tuple[int, str]:
    """A delivery's OSError as (status, reason): a path that can never work
    is permanent, everything else (EACCES, ENOSPC, EDQUOT...) temporary."""
    reason = f"{e.strerror or e}: {e.filename or where}"
    return (EX_PERM if e.errno in PERMANENT_ERRNOS else EX_TEMPFAIL), reason


def _write_as_user(where: str, message_fd: int, anchor_fd: int | None,
                   write: Callable[[BinaryIO], None]) -> tuple[int, str]:
    """The one frame of every file delivery, already running as the user:
    never as root; from the anchor directory when there is one (the rest of
    the path is resolved as the user); an OSError mapped by its errno."""
    if os.geteuid() == 0:
        return EX_TEMPFAIL, "refusing to deliver as root"
    try:
        if anchor_fd is not None:
            os.fchdir(anchor_fd)
        with os.fdopen(message_fd, "rb", closefd=False) as source:
            write(source)
    except OSError as e:
        return os_error_result(e, where)
    finally:
        if anchor_fd is not None:
            os.chdir("/")
    return EX_OK, "Delivered"


def deliver_job(root: str, prefix: bytes, message_fd: int, anchor_fd: int | None,
                name: str | None = None) -> tuple[int, str]:
    """Deliver one message into one Maildir; with an anchor, `root` is
    relative to it."""
    return _write_as_user(root, message_fd, anchor_fd,
                          lambda source: deliver(Path(root), prefix, source, name))


def mbox_job(sender: str, prefix: bytes, message_fd: int, mailbox_fd: int,
             where: str) -> tuple[int, str]:
    """Append to a system mailbox the daemon opened (and dot-locked) as root."""
    return _write_as_user(where, message_fd, None,
                          lambda source: mbox.append(mailbox_fd, sender, prefix, source))


def file_job(path: str, sender: str, prefix: bytes, message_fd: int,
             anchor_fd: int | None) -> tuple[int, str]:
    """Append to the mbox file an alias target names, as the user throughout."""
    return _write_as_user(path, message_fd, anchor_fd,
                          lambda source: mbox.deliver_file(path, sender, prefix, source))


def command_job(job: dict[str, Any], prefix: bytes, message_fd: int) -> tuple[int, str]:
    argv = [str(a) for a in job["argv"]]
    environ = dict(str(e).split("=", 1) for e in job["environ"])
    with os.fdopen(message_fd, "rb", closefd=False) as source:
        return command.run(argv, environ, str(job["home"]), prefix, source,
                           float(job["timeout"]), int(job["cpu"]))


def run_job(job: dict[str, Any], fds: list[int]) -> tuple[int, str]:
    """One job by its method; `fds[0]` is always the message."""
    if not fds:
        return EX_TEMPFAIL, "job without its message"
    method = job.get("method", "maildir")
    prefix = str(job["prefix"]).encode("utf-8", "surrogateescape")
    extra = fds[1] if len(fds) > 1 else None
    if method == "maildir":
        name = job.get("name")
        return deliver_job(str(job["root"]), prefix, fds[0], extra,
                           None if name is None else str(name))
    if method == "mbox" and extra is not None:
        return mbox_job(str(job["sender"]), prefix, fds[0], extra, str(job["root"]))
    if method == "file":
        return file_job(str(job["root"]), str(job["sender"]), prefix, fds[0], extra)
    if method == "mda":
        return command_job(job, prefix, fds[0])
    return EX_TEMPFAIL, f"unknown delivery method {method!r}"


def decode_job(data: bytes) -> dict[str, Any]:
    job = json.loads(data)
    if not isinstance(job, dict):
        raise ValueError("a job is a JSON object")
    return job


def encode_job(method: str, prefix: bytes, **fields: Any) -> bytes:
    """A job frame: the method, the prefix lines, and the method's fields
    (maildir: root, name; mbox: root (for messages), sender; file: root,
    sender; mda: argv, environ, home, timeout, cpu)."""
    return json.dumps({"method": method, "prefix": prefix.decode("utf-8", "surrogateescape"),
                       **fields}).encode()


def serve(channel: socket.socket) -> None:
    """Answer jobs until the channel closes."""
    while True:
        data, fds, _flags, _addr = socket.recv_fds(channel, MAX_FRAME, MAX_FDS)
        if not data:
            return                       # EOF: the daemon is gone or retired us
        try:
            result = run_job(decode_job(data), fds)
        except (ValueError, KeyError, TypeError):
            result = (EX_TEMPFAIL, "malformed job frame")
        finally:
            for fd in fds:
                os.close(fd)
        channel.sendall(json.dumps({"status": result[0], "reason": result[1]}).encode())


def limit_resources(max_file_size: int) -> None:
    """What every delivery of this worker is held to: no core dumps (they
    would hold mail), files no larger than `max_file_size` (0: no limit).
    Hard limits too, so a command cannot raise them back."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if max_file_size > 0:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_size, max_file_size))


def main(argv: list[str]) -> int:
    """`worker FD PARENT_PID UID GID [MAX_FILE_SIZE]`: drop to UID/GID, then serve FD."""
    fd, parent, uid, gid = (int(a) for a in argv[:4])
    max_file_size = int(argv[4]) if len(argv) > 4 else 0
    if uid == 0 or gid == 0:
        return EX_TEMPFAIL               # never a delivery as root
    channel = socket.socket(fileno=fd)
    if os.geteuid() == 0:
        drop_privileges(uid, gid)
    die_with_parent(parent, EX_TEMPFAIL)
    os.umask(0o077)                      # mail is private: every file it creates too
    limit_resources(max_file_size)
    os.chdir("/")
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the daemon's ^C is the daemon's
    try:
        serve(channel)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
