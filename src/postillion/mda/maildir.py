"""Maildir delivery (`action ... maildir [PATH]`, docs/configuration.md).

The message is written to `tmp/`, fsynced, then renamed into `new/` and the
`new/` directory fsynced: a reader never sees a partial message, and once the
agent reports success the message survives a power cut -- only then does the
queue drop its envelope.  The Maildir (and missing parents) is created with
mode 0700 by whoever runs the delivery: the recipient's uid, never root.

The queue stores CRLF line ends (docs/smtp.md); a Maildir holds the local
convention, LF, which every reader (Dovecot, mutt, Courier) expects
(`stream.lf_chunks`).

Redelivery is idempotent: the daemon names each envelope's file after the
envelope (`stable_name`), so a delivery repeated because the daemon died
between the rename and the removal of its envelope replaces the first copy
in `new/` instead of adding a second one.  (A copy the reader has already
moved to `cur/` is not looked for: that would mean listing `cur/` at every
delivery.)
"""

from __future__ import annotations

import os
import socket
import time
from itertools import count
from pathlib import Path
from typing import BinaryIO

from postillion.fsutil import fsync_dir
from postillion.mda.stream import lf_chunks

_counter = count()


def ensure_maildir(root: Path) -> None:
    """Create the Maildir and any missing parent (a virtual user's new home)
    mode 0700: mail is private, and mkdir(parents=True) alone would leave
    the parents world-readable."""
    missing = []
    directory = root
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(mode=0o700, exist_ok=True)


def stable_name(evpid: int, ctime: float, hostname: str) -> str:
    """`ctime.Eevpid.host`: a Maildir name that is unique to the envelope and
    the same at every attempt (docs/architecture.md, The queue)."""
    host = hostname.replace("/", "\\057").replace(":", "\\072")
    return f"{int(ctime)}.E{evpid:016x}.{host}"


def unique_name() -> str:
    """`time.MusecPpidQn.host`, the usual maildir unique name."""
    now = time.time()
    host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    return f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_counter)}.{host}"


def deliver(root: Path, prefix: bytes, message: BinaryIO, name: str | None = None) -> Path:
    """Write prefix + message into the Maildir at root; return the new file.

    `name` (`stable_name`) makes a repeated delivery replace its first copy;
    None draws a fresh unique name.  Raises OSError on any failure; the
    caller maps it (ENOSPC, EDQUOT, EACCES...) to a temporary failure and
    the tmp file is removed.
    """
    ensure_maildir(root)
    if name is None:
        name = unique_name()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    else:
        if "/" in name or name.startswith("."):
            raise ValueError(f"not a Maildir file name: {name!r}")
        # An attempt that died before its rename may have left this tmp file.
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    tmp = root / "tmp" / name
    fd = os.open(tmp, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(prefix.replace(b"\r\n", b"\n"))
            for chunk in lf_chunks(message):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        final = root / "new" / name
        os.rename(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(root / "new")
    return final
