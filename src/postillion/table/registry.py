"""Which backend a `table NAME BACKEND:CONFIG` line names.

One explicit tuple, like OpenSMTPD's `backends[]`: adding a backend is one
import and one entry here, never an import side effect.  An unknown name is
a config error (`TableError`), never a silent fallback.
"""

from __future__ import annotations

import importlib
from typing import Final

from postillion.table.backend import Backend
from postillion.table.backends.db import DbBackend
from postillion.table.backends.file import FileBackend
from postillion.table.backends.getpwnam import GetpwnamBackend
from postillion.table.backends.sqlite import SqliteBackend
from postillion.table.backends.static import StaticBackend
from postillion.table.errors import TableError

#: The local backends, imported with the table layer.
LOCAL: Final[tuple[type[Backend], ...]] = (
    StaticBackend,
    FileBackend,
    DbBackend,
    GetpwnamBackend,
    SqliteBackend,
)

#: The networked backends, "module:Class", imported on first use: each
#: pulls in its client library (asyncpg, aiomysql, redis, ldap3), which
#: every process of the daemon would otherwise load -- some 28 MiB each --
#: whether or not a table uses it.
NETWORKED: Final[dict[str, str]] = {
    "redis": "postillion.table.backends.redis:RedisBackend",
    "socketmap": "postillion.table.backends.socketmap:SocketmapBackend",
    "proc": "postillion.table.backends.proc:ProcBackend",
    "postgres": "postillion.table.backends.postgres:PostgresBackend",
    "mysql": "postillion.table.backends.mysql:MysqlBackend",
    "ldap": "postillion.table.backends.ldap:LdapBackend",
}

#: Every backend name a `table` line may use.
BACKEND_NAMES: Final[tuple[str, ...]] = tuple(sorted({c.name for c in LOCAL} | set(NETWORKED)))

# Other spellings, for a table that has a CONFIG string: OpenSMTPD reads
# `static:/path` as a file table (its static backend also reads files).
ALIASES: Final[dict[str, str]] = {"static": "file"}

_BY_NAME: dict[str, type[Backend]] = {cls.name: cls for cls in LOCAL}


def backend_class(table: str, backend: str, config: str | None) -> type[Backend]:
    """The backend class for a declaration; TableError if there is none."""
    name = backend.lower()
    if config is not None:
        name = ALIASES.get(name, name)
    cls = _BY_NAME.get(name)
    if cls is None and name in NETWORKED:
        module, _, attr = NETWORKED[name].partition(":")
        cls = _BY_NAME[name] = getattr(importlib.import_module(module), attr)
    if cls is None:
        known = ", ".join(BACKEND_NAMES)
        raise TableError(f'table {table}: unknown backend "{backend}" (known: {known})')
    return cls
