"""Which backend a `table NAME BACKEND:CONFIG` line names.

One explicit tuple, like OpenSMTPD's `backends[]`: adding a backend is one
import and one entry here, never an import side effect.  A name that is
none of them is OpenSMTPD's way to a table helper: `table NAME X:CONFIG`
runs the program `table-X` from the helper directories (paths.py) as a
`proc` table, with CONFIG as its one argument; no such program is a config
error (`TableError`), never a silent fallback.
"""

from __future__ import annotations

import importlib
import os
import shlex
from pathlib import Path
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


#: Where `table NAME X:CONFIG` finds the helper `table-X` of a backend it
#: does not know (OpenSMTPD's libexec helpers, run as `proc` tables), in
#: this order; $POSTILLION_LIBEXEC (directories separated by `:`) names
#: others before them, for a package installed elsewhere and for tests.
#: (Here, not in postillion/paths.py: the table layer imports nothing of ours.)
LIBEXEC_DIRS: Final = ("/usr/local/libexec/postillion", "/usr/libexec/postillion")
LIBEXEC_ENV: Final = "POSTILLION_LIBEXEC"


def helper_dirs() -> list[Path]:
    """Where `table-X` helpers are looked for: $POSTILLION_LIBEXEC first."""
    extra = [d for d in os.environ.get(LIBEXEC_ENV, "").split(":") if d]
    return [Path(d) for d in (*extra, *LIBEXEC_DIRS)]


def helper(backend: str) -> Path | None:
    """The executable `table-BACKEND`, or None.  Only plain names: a
    backend name never walks out of the helper directories."""
    if not backend.replace("-", "").replace("_", "").isalnum():
        return None
    for directory in helper_dirs():
        path = directory / f"table-{backend}"
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def _class(name: str) -> type[Backend] | None:
    cls = _BY_NAME.get(name)
    if cls is None and name in NETWORKED:
        module, _, attr = NETWORKED[name].partition(":")
        cls = _BY_NAME[name] = getattr(importlib.import_module(module), attr)
    return cls


def resolve(table: str, backend: str, config: str | None) -> tuple[type[Backend], str | None]:
    """The backend class for a declaration and the config string it gets:
    the declaration's own, or for a helper `table-X` the proc command line
    that runs it with CONFIG as its argument.  TableError if there is none."""
    name = backend.lower()
    if config is not None:
        name = ALIASES.get(name, name)
    cls = _class(name)
    if cls is not None:
        return cls, config
    program = helper(name)
    if program is None:
        known = ", ".join(BACKEND_NAMES)
        where = ", ".join(str(d) for d in helper_dirs())
        raise TableError(f'table {table}: unknown backend "{backend}" (known: {known}; '
                         f'no helper table-{name} in {where})')
    proc = _class("proc")
    assert proc is not None
    return proc, shlex.join([str(program), *([config] if config else [])])


def backend_class(table: str, backend: str, config: str | None) -> type[Backend]:
    """The backend class for a declaration; TableError if there is none."""
    return resolve(table, backend, config)[0]
