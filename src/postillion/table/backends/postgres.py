"""`postgres:/path/to/postgres.conf`: tables in PostgreSQL (docs/tables.md).

CONFIG is a backend-config file (`table/backend_config.py`):

    conninfo host=db.example.net dbname=mail user=smtpd password='s3cr et'
    query_domain SELECT name FROM domains WHERE name = $1
    query_alias SELECT target FROM virtuals WHERE address = $1
    query_userinfo SELECT uid, gid, home FROM users WHERE name = $1
    query_credentials SELECT name, hash FROM credentials WHERE name = $1
    pool_size 4
    connect_timeout 5
    query_timeout 5

`conninfo` is libpq's: `key=value` pairs (values may be single-quoted, with
`\\'` and `\\\\` inside) or a `postgresql://` URI; the keys understood are
host, hostaddr, port, user, password, dbname, sslmode and application_name
-- an unknown one is an error naming `file:line`, not silently ignored.
Without `conninfo` the PG* environment variables and libpq's defaults apply.

Each query takes one parameter, `$1`, the lowercased key, sent apart from the
SQL (the extended protocol: the key is never part of the query text).  At
open every query is prepared on the server, which checks it exists, takes
exactly one text parameter and returns the columns its service needs, and
run once with an empty key: a mistake is an error at start naming
`file:line`.  The pool, the timeouts and
the outage behaviour are the shared ones of `table/netsql.py`.

asyncpg is the client: asynchronous (the event loop never blocks on the
server), with prepared statements cached per connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Final

import asyncpg

from postillion.table.backend_config import BackendConfig
from postillion.table.errors import BackendError
from postillion.table.netsql import CLOSE_TIMEOUT, NetSqlBackend, PoolSettings

# Parameter types a key (text) can be bound to; others need `$1::text`.
TEXT_TYPES: Final = frozenset({"text", "varchar", "bpchar", "name", "citext", "unknown"})
# libpq conninfo keys -> asyncpg.connect arguments.
CONNINFO_KEYS: Final = {"host": "host", "hostaddr": "host", "port": "port", "user": "user",
                        "password": "password", "dbname": "database", "sslmode": "ssl",
                        "application_name": "application_name"}
STALE_ERRORS: Final = (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
                       asyncpg.AdminShutdownError, asyncpg.CannotConnectNowError)


def parse_conninfo(text: str, where: str) -> dict[str, str]:
    """libpq's `key=value ...` form; ValueError-free: BackendError at `where`."""
    out: dict[str, str] = {}
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return out
        eq = text.find("=", i)
        if eq < 0:
            raise BackendError(f'{where}: conninfo: "{text[i:]}" has no "="')
        key = text[i:eq].strip()
        i = eq + 1
        while i < n and text[i].isspace():
            i += 1
        value: list[str] = []
        if i < n and text[i] == "'":
            i += 1
            while True:
                if i >= n:
                    raise BackendError(f"{where}: conninfo: unterminated quoted value of {key}")
                c = text[i]
                if c == "\\" and i + 1 < n:
                    value.append(text[i + 1])
                    i += 2
                    continue
                i += 1
                if c == "'":
                    break
                value.append(c)
        else:
            while i < n and not text[i].isspace():
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(text[i])
                i += 1
        if key not in CONNINFO_KEYS:
            known = ", ".join(sorted(CONNINFO_KEYS))
            raise BackendError(f'{where}: conninfo: unknown key "{key}" (known: {known})')
        out[key] = "".join(value)


class PostgresDriver:
    """asyncpg, as `netsql.Pool` drives it."""

    def __init__(self, connect_args: dict[str, Any]) -> None:
        self.connect_args = connect_args

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(**self.connect_args)

    def alive(self, conn: asyncpg.Connection) -> bool:
        return not conn.is_closed()

    def abort(self, conn: asyncpg.Connection) -> None:
        conn.terminate()

    async def close(self, conn: asyncpg.Connection) -> None:
        await conn.close(timeout=CLOSE_TIMEOUT)

    async def columns(self, conn: asyncpg.Connection, sql: str, params: int, where: str,
                      key: str) -> int:
        try:
            statement = await conn.prepare(sql)
        except asyncpg.PostgresError as e:
            if isinstance(e, STALE_ERRORS):
                raise
            raise BackendError(f"{where}: {key}: {e}") from None
        types = statement.get_parameters()
        if len(types) != params:
            wanted = 'one parameter, "$1" (the key)' if params else "no parameter"
            raise BackendError(f"{where}: {key} must take {wanted}")
        if types and types[0].name not in TEXT_TYPES:
            raise BackendError(f"{where}: {key}: $1 is {types[0].name}, but the key is text"
                               " (write $1::text)")
        try:    # run once, as every SQL backend does at open: errors of execution too
            await statement.fetchrow(*("",) * params)
        except asyncpg.PostgresError as e:
            if isinstance(e, STALE_ERRORS):
                raise
            raise BackendError(f"{where}: {key}: {e}") from None
        return len(statement.get_attributes())

    async def rows(self, conn: asyncpg.Connection, sql: str, args: tuple[str, ...],
                   every: bool) -> Sequence[Sequence[object]]:
        if every:
            return await conn.fetch(sql, *args)
        row = await conn.fetchrow(sql, *args)
        return [row] if row is not None else []

    def stale(self, error: Exception) -> bool:
        return isinstance(error, STALE_ERRORS)


class PostgresBackend(NetSqlBackend):
    name: ClassVar[str] = "postgres"
    connection_keys: ClassVar[frozenset[str]] = frozenset({"conninfo"})

    def make_driver(self, cfg: BackendConfig, settings: PoolSettings) -> PostgresDriver:
        args: dict[str, Any] = {"timeout": settings.connect_timeout}
        conninfo = cfg.get("conninfo")
        if conninfo is not None:
            if conninfo.startswith(("postgres://", "postgresql://")):
                args["dsn"] = conninfo
            else:
                for key, value in parse_conninfo(conninfo, cfg.where("conninfo")).items():
                    if key == "application_name":
                        args["server_settings"] = {"application_name": value}
                    else:
                        args[CONNINFO_KEYS[key]] = value
        if "port" in args:
            if not args["port"].isdigit():
                raise BackendError(f"{cfg.where('conninfo')}: conninfo: port wants a number")
            args["port"] = int(args["port"])
        return PostgresDriver(args)
