"""Which backend a `table NAME BACKEND:CONFIG` line names.

One explicit tuple, like OpenSMTPD's `backends[]`: adding a backend is one
import and one entry here, never an import side effect.  An unknown name is
a config error (`TableError`), never a silent fallback.
"""

from __future__ import annotations

from typing import Final

from postillion.table.backend import Backend
from postillion.table.backends.db import DbBackend
from postillion.table.backends.file import FileBackend
from postillion.table.backends.getpwnam import GetpwnamBackend
from postillion.table.backends.ldap import LdapBackend
from postillion.table.backends.mysql import MysqlBackend
from postillion.table.backends.postgres import PostgresBackend
from postillion.table.backends.proc import ProcBackend
from postillion.table.backends.redis import RedisBackend
from postillion.table.backends.socketmap import SocketmapBackend
from postillion.table.backends.sqlite import SqliteBackend
from postillion.table.backends.static import StaticBackend
from postillion.table.errors import TableError

BACKENDS: Final[tuple[type[Backend], ...]] = (
    StaticBackend,
    FileBackend,
    DbBackend,
    GetpwnamBackend,
    SqliteBackend,
    RedisBackend,
    SocketmapBackend,
    ProcBackend,
    PostgresBackend,
    MysqlBackend,
    LdapBackend,
)

# Other spellings, for a table that has a CONFIG string: OpenSMTPD reads
# `static:/path` as a file table (its static backend also reads files).
ALIASES: Final[dict[str, str]] = {"static": "file"}

_BY_NAME: Final = {cls.name: cls for cls in BACKENDS}


def backend_class(table: str, backend: str, config: str | None) -> type[Backend]:
    """The backend class for a declaration; TableError if there is none."""
    name = backend.lower()
    if config is not None:
        name = ALIASES.get(name, name)
    cls = _BY_NAME.get(name)
    if cls is None:
        known = ", ".join(sorted(_BY_NAME))
        raise TableError(f'table {table}: unknown backend "{backend}" (known: {known})')
    return cls
