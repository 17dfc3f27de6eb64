"""Where the queue keeps things on disk (docs/architecture.md), shared by store and recovery.

    incoming/<msgid>/message          being received; never acknowledged
    queue/<XX>/<msgid>/message        committed; XX = top byte of msgid
    queue/<XX>/<msgid>/<evpid>        one self-validating file per envelope
    queue/<XX>/<msgid>/<evpid>.tmp    an update before its rename
    corrupt/<msgid>/...               files we could not trust, kept for a human

Buckets keep directories small on big queues; everything is mode 0700/0600
because messages are private mail.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Final

INCOMING: Final = "incoming"
QUEUE: Final = "queue"
CORRUPT: Final = "corrupt"
MESSAGE: Final = "message"
TMP_SUFFIX: Final = ".tmp"
DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600


def bucket(msgid: int) -> str:
    """The `queue/XX` directory name of a message: its top byte, 2 hex digits."""
    return f"{msgid >> 24:02x}"


def is_bucket(name: str) -> bool:
    return len(name) == 2 and not name.strip("0123456789abcdef")


def remove_any(path: Path) -> None:
    """Remove a file or a directory tree; a missing path is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=False)
    else:
        path.unlink(missing_ok=True)
