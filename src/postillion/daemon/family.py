"""The parent's family of processes: what it knows of each role, and the
user and spool they run with.

Apart from parent.py so that the reload (generations.py), which makes a new
generation of roles, and the parent share one definition.
"""

from __future__ import annotations

import asyncio
import collections
import os
import pwd
import socket
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from postillion import channel as ch
from postillion.config.model import Config
from postillion.daemon import StartupError
from postillion.smtp.server import Gate

#: Restart back-off: the first restart waits this long, each quick death
#: doubles it up to RESTART_MAX; a role that ran RESTART_RESET s starts over.
RESTART_MIN: Final = 1.0
RESTART_MAX: Final = 60.0
RESTART_RESET: Final = 60.0


@dataclass(eq=False)
class Role:
    """One role process the parent watches."""

    name: str                       # "queue", "smtp" or "mta"
    index: int
    proc: subprocess.Popen[bytes] | None = None
    channel: ch.Channel | None = None
    hello: asyncio.Event = field(default_factory=asyncio.Event)
    started: float = 0.0
    backoff: float = RESTART_MIN
    peer: socket.socket | None = None   # smtp: the queue's end of our pair, until sent
    admitted: collections.Counter[tuple[int, str]] = field(default_factory=collections.Counter)
    #: smtp: the session counts of its generation's listeners, by index.
    gates: list[Gate] = field(default_factory=list)
    #: Replaced by a reload: not restarted when it exits.
    retired: bool = False

    @property
    def label(self) -> str:
        pid = self.proc.pid if self.proc is not None else "-"
        return f"{self.name} process {self.index} (pid {pid})" if self.name == "smtp" \
            else f"{self.name} process (pid {pid})"


def role_user(config: Config) -> tuple[int, int]:
    """The uid/gid the roles run as: the queue user when root, else ourselves."""
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    name = config.processes.queue_user
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise StartupError(f"the queue user {name} does not exist; create it with "
                           f"`useradd --system --no-create-home --shell /usr/sbin/nologin "
                           f"{name}` (make run and make test do)") from None
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise StartupError(f"the queue user {name} is root; it must be an unprivileged user")
    return entry.pw_uid, entry.pw_gid


def needs_mta(config: Config) -> bool:
    """Whether any action relays or delivers over LMTP (the mta process runs
    the client for both): only then is there an mta process."""
    return any(action.method in ("relay", "lmtp") for action in config.actions.values())


def own_spool(spool: Path, uid: int, gid: int) -> None:
    """The spool belongs to the queue user: 0711 at the top (where the
    control socket lives), its own subdirectories 0700 (made by the
    queue process).  A spool another user owns (made by an older version
    as root) is handed over whole, once."""
    spool.mkdir(mode=0o711, parents=True, exist_ok=True)
    st = spool.stat()
    if (st.st_uid, st.st_gid) != (uid, gid):
        for path in [spool, *spool.rglob("*")]:
            if path.name == "postillion.pid" and path.parent == spool:
                continue
            os.lchown(path, uid, gid)
    if stat.S_IMODE(st.st_mode) != 0o711:
        spool.chmod(0o711)
