"""`mysql:/path/to/mysql.conf`: tables in MariaDB or MySQL (docs/tables.md).

CONFIG is a backend-config file (`table/backend_config.py`):

    host db.example.net          (127.0.0.1; `unix:/run/mysqld/mysqld.sock`)
    port 3306
    username smtpd
    password s3cret
    database mail
    query_domain SELECT name FROM domains WHERE name = ?
    query_alias SELECT target FROM virtuals WHERE address = ?
    pool_size 4
    connect_timeout 5
    query_timeout 5

Each query takes one `?` (outside quotes), the lowercased key.  The client
(aiomysql, over PyMySQL) has no server-side prepared statements: it sends
the key as a string literal escaped by the driver for the connection's
character set (utf8mb4) and SQL mode, never pasted by us, so `x' OR '1'='1`
is looked up as that string.  Our `?` becomes the driver's `%s`, and any `%`
of the query is doubled so that it stays a `%` (a `LIKE 'a%'` works).

At open every query is run once with an empty key, so a wrong column count,
a missing table or a second `?` is an error at start naming `file:line`.
The pool, the timeouts and the outage behaviour are the shared ones of
`table/netsql.py`.  Connections run with autocommit, so each lookup sees
the rows committed before it (no snapshot held open by an idle connection).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Final

import aiomysql
import pymysql

from postillion.table.backend_config import BackendConfig
from postillion.table.errors import BackendError
from postillion.table.netsql import NetSqlBackend, PoolSettings

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 3306
CHARSET: Final = "utf8mb4"
# Client error codes of a connection that is gone (CR_SERVER_GONE_ERROR,
# CR_SERVER_LOST, CR_SERVER_LOST_EXTENDED) or a server shutting down.
STALE_CODES: Final = frozenset({2006, 2013, 2055, 1053})


def placeholders(sql: str) -> tuple[str, int]:
    """Our `?` -> the driver's `%s`, every `%` doubled; and how many `?` there were.

    A `?` inside a quoted string or identifier ('...', "...", `...`) is text.
    """
    out: list[str] = []
    count = 0
    quote = ""
    i = 0
    while i < len(sql):
        c = sql[i]
        if quote:
            if c == "\\" and quote != "`" and i + 1 < len(sql):
                out.append(sql[i:i + 2].replace("%", "%%"))
                i += 2
                continue
            if c == quote:
                quote = ""
        elif c in "'\"`":
            quote = c
        elif c == "?":
            out.append("%s")
            count += 1
            i += 1
            continue
        out.append("%%" if c == "%" else c)
        i += 1
    return "".join(out), count


class MysqlDriver:
    """aiomysql connections, as `netsql.Pool` drives them."""

    def __init__(self, connect_args: dict[str, Any]) -> None:
        self.connect_args = connect_args
        self._translated: dict[str, str] = {}

    async def connect(self) -> aiomysql.Connection:
        return await aiomysql.connect(**self.connect_args)

    def alive(self, conn: aiomysql.Connection) -> bool:
        reader = getattr(conn, "_reader", None)
        return not conn.closed and not (reader is not None and reader.at_eof())

    def abort(self, conn: aiomysql.Connection) -> None:
        conn.close()

    async def close(self, conn: aiomysql.Connection) -> None:
        await conn.ensure_closed()

    async def columns(self, conn: aiomysql.Connection, sql: str, params: int, where: str,
                      key: str) -> int:
        translated, count = placeholders(sql)
        if count != params:
            wanted = 'one "?" (the key)' if params else 'no "?"'
            raise BackendError(f"{where}: {key} must take {wanted}")
        try:
            async with conn.cursor() as cursor:
                if params:
                    await cursor.execute(translated, ("",) * params)
                else:
                    await cursor.execute(sql)
                await cursor.fetchall()
                got = len(cursor.description) if cursor.description else 0
        except pymysql.err.MySQLError as e:
            if self.stale(e) or isinstance(e, pymysql.err.OperationalError) and e.args \
                    and isinstance(e.args[0], int) and e.args[0] >= 2000:
                raise            # the connection, not the query: an outage
            raise BackendError(f"{where}: {key}: {_message(e)}") from None
        self._translated[sql] = translated
        return got

    async def rows(self, conn: aiomysql.Connection, sql: str, args: tuple[str, ...],
                   every: bool) -> Sequence[Sequence[object]]:
        async with conn.cursor() as cursor:
            if args:
                await cursor.execute(self._translated[sql], args)
            else:
                await cursor.execute(sql)
            rows = await cursor.fetchall()
        return rows if every else rows[:1]

    def stale(self, error: Exception) -> bool:
        if isinstance(error, (OSError, pymysql.err.InterfaceError)):
            return True
        return (isinstance(error, pymysql.err.OperationalError) and bool(error.args)
                and error.args[0] in STALE_CODES)


def _message(error: pymysql.err.MySQLError) -> str:
    if len(error.args) == 2:
        return f"({error.args[0]}) {error.args[1]}"
    return str(error)


class MysqlBackend(NetSqlBackend):
    name: ClassVar[str] = "mysql"
    connection_keys: ClassVar[frozenset[str]] = frozenset(
        {"host", "port", "username", "password", "database"})

    def make_driver(self, cfg: BackendConfig, settings: PoolSettings) -> MysqlDriver:
        args: dict[str, Any] = {
            "port": cfg.integer("port", DEFAULT_PORT, minimum=1),
            "user": cfg.get("username") or "",
            "password": cfg.get("password") or "",
            "charset": CHARSET,
            "autocommit": True,
            "connect_timeout": settings.connect_timeout,
        }
        host = cfg.get("host") or DEFAULT_HOST
        if host.startswith("unix:"):
            args["unix_socket"] = host[len("unix:"):]
        else:
            args["host"] = host
        database = cfg.get("database")
        if database is not None:
            args["db"] = database
        return MysqlDriver(args)
