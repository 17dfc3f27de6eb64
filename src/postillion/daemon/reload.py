"""What a reload reads and decides before the parent swaps its processes.

`postillion run` remembers where its configuration came from (a
`ConfigSource`: the file and the `-D` macros); SIGHUP, or a caller of
`Parent.reload()`, reads it again.  This module holds the parts of a
reload that touch no process: reading the file, what may not change
without a restart, which listening sockets the new configuration keeps
(`ListenKey`), and the one line that says why a reload is refused, naming
`file:line` (docs/configuration.md, Reloading).  The process swap itself
(a new generation of smtp processes, the old ones draining, the queue
and mta processes restarted) is the parent's (`parent.py`).
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from postillion.config.model import Config, ListenDecl
from postillion.daemon import listen_error
from postillion.smtp.server import Listener, bind

#: A message that already starts with `file:line:` (a Position, or a
#: table's backend-config line) is said as it is.
_LOCATED: Final = re.compile(r"^\S[^:\s]*:\d+:")
#: A table's own error starts `table NAME:` or `table NAME (backend ...)`.
_TABLE: Final = re.compile(r"^table ([^\s:]+)[:\s]")


class ReloadRefused(Exception):
    """The new configuration cannot be applied; the message names file:line."""


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where the running configuration came from: read again on reload,
    with the same `-D` macros (as `postfix reload` re-reads main.cf)."""

    path: Path
    defines: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, path: Path, defines: dict[str, str]) -> ConfigSource:
        # Absolute: the parent's working directory is not the file's.
        return cls(path.absolute(), tuple(sorted(defines.items())))

    def load(self) -> Config:
        """The configuration as the file says now; ReloadRefused naming
        file:line:column when it does not parse."""
        from postillion.config import ConfigError, load
        try:
            return load(self.path, dict(self.defines))
        except ConfigError as e:
            lines = str(e).splitlines() or [f"{self.path}: does not parse"]
            more = f" (and {len(lines) - 1} more: postillion check -f {self.path})" \
                if len(lines) > 1 else ""
            raise ReloadRefused(lines[0] + more) from None
        except OSError as e:
            raise ReloadRefused(f"{self.path}: {e.strerror or e}") from None


#: What a listening socket is: family, port and the addresses bound (None:
#: the wildcard).  Everything else of a `listen on` -- TLS, AUTH, host name,
#: limits -- is the smtp processes' business, so a listener whose key does
#: not change keeps its socket across a reload whatever else changed.
ListenKey = tuple[str | None, int, tuple[str, ...] | None]


def listen_key(decl: ListenDecl, hosts: list[str] | None) -> ListenKey:
    return (decl.family, decl.effective_port, tuple(sorted(hosts)) if hosts is not None else None)


Sockets = list[socket.socket]


def bind_again(running: dict[ListenKey, Sockets], listeners: list[Listener],
               keys: list[ListenKey]) -> tuple[list[Sockets], list[Sockets]]:
    """Each new listener's sockets: the running ones of the same key, as
    they are (no port gap, the backlog kept), else bound now.  Returns them
    and those bound now; ReloadRefused, with nothing left bound, when a bind
    fails (a port taken, or one a removed listener still holds)."""
    running = dict(running)
    sockets: list[Sockets] = []
    fresh: list[Sockets] = []
    for listener, key in zip(listeners, keys):
        if key in running:
            sockets.append(running.pop(key))
            continue
        try:
            socks = bind(listener.decl, listener.hosts)
        except OSError as e:
            for bound in fresh:
                for sock in bound:
                    sock.close()
            raise ReloadRefused(str(listen_error(listener.decl, e))) from None
        fresh.append(socks)
        sockets.append(socks)
    return sockets, fresh


def fixed_options(old: Config, new: Config, path: Path) -> str | None:
    """What a reload cannot change: the user every process runs as (the
    spool belongs to it) and the metrics endpoint (its socket and the
    roles' counter files are set up once, at the start).  `smtp workers`
    may change: the new generation has the new count."""
    if old.processes.queue_user != new.processes.queue_user:
        return (f"{path}: queue user {new.processes.queue_user} differs from the running "
                f"{old.processes.queue_user}; changing it needs a restart")
    before = None if old.metrics is None else (old.metrics.address, old.metrics.port)
    after = None if new.metrics is None else (new.metrics.address, new.metrics.port)
    if before != after:
        where = new.metrics.pos if new.metrics is not None else path
        return f"{where}: the metrics endpoint differs from the running one; changing it needs a restart"
    return None


def located(text: str, config: Config | None, path: Path) -> str:
    """`text` naming where it comes from: as it is when it already starts
    with file:line; a table's error after the table's declaration; else
    after the configuration file."""
    text = " ".join(text.split("\n"))
    if _LOCATED.match(text):
        return text
    match = _TABLE.match(text)
    if config is not None and match and match.group(1) in config.tables:
        return f"{config.tables[match.group(1)].pos}: {text}"
    return f"{path}: {text}"
