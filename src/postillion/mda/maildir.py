"""Maildir delivery (`action ... maildir [PATH]`, docs/configuration.md).

The message is written to `tmp/`, fsynced, then renamed into `new/` and the
`new/` directory fsynced: a reader never sees a partial message, and once the
agent reports success the message survives a power cut -- only then does the
queue drop its envelope.  The Maildir (and missing parents) is created with
mode 0700 by whoever runs the delivery: the recipient's uid, never root.

The queue stores CRLF line ends (docs/smtp.md); a Maildir holds the local
convention, LF, which every reader (Dovecot, mutt, Courier) expects.
"""

from __future__ import annotations

import os
import socket
import time
from itertools import count
from pathlib import Path
from typing import BinaryIO

from postillion.fsutil import fsync_dir

_counter = count()
CHUNK = 64 * 1024


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


def unique_name() -> str:
    """`time.MusecPpidQn.host`, the usual maildir unique name."""
    now = time.time()
    host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    return f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_counter)}.{host}"


def deliver(root: Path, prefix: bytes, message: BinaryIO) -> Path:
    """Write prefix + message into the Maildir at root; return the new file.

    Raises OSError on any failure; the caller maps it (ENOSPC, EDQUOT,
    EACCES...) to a temporary failure and the tmp file is removed.
    """
    ensure_maildir(root)
    name = unique_name()
    tmp = root / "tmp" / name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(prefix.replace(b"\r\n", b"\n"))
            carry = b""
            while chunk := message.read(CHUNK):
                chunk = carry + chunk
                # A CR at the end of a chunk may start a CRLF split by the read.
                carry = b"\r" if chunk.endswith(b"\r") else b""
                out.write(chunk[: len(chunk) - len(carry)].replace(b"\r\n", b"\n"))
            out.write(carry)
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
