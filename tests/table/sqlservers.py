"""The real PostgreSQL and MariaDB servers the networked SQL tests use.

PostgreSQL at 127.0.0.1:5432 (user postgres, trust) and MariaDB at
127.0.0.1:3306 (root, no password) are started by the machine, not by the
tests.  A server that is not there fails the test that needs it, loudly:
never a skip.  Each user of these helpers works in a schema (PostgreSQL) or
a database (MariaDB) of its own, with a unique name, dropped afterwards.

The helpers are synchronous (a Builder's `rewrite_map` is): PostgreSQL's run
asyncpg on an event loop of their own in a thread, MariaDB's use PyMySQL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import pymysql

PG_HOST, PG_PORT, PG_USER, PG_DB = "127.0.0.1", 5432, "postgres", "postgres"
MY_HOST, MY_PORT, MY_USER = "127.0.0.1", 3306, "root"


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def _in_thread(coro: Any) -> Any:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout=30)


def pg_run(statements: Sequence[tuple[str, Sequence[Sequence[object]]]] | Sequence[str],
           fetch: str | None = None) -> Any:
    """Run statements (SQL, or (SQL, rows) for executemany); `fetch` one value."""
    async def go() -> Any:
        try:
            conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER,
                                         database=PG_DB, timeout=5)
        except OSError as e:
            raise AssertionError(f"PostgreSQL is not running at {PG_HOST}:{PG_PORT}: {e}") from e
        try:
            for statement in statements:
                if isinstance(statement, str):
                    await conn.execute(statement)
                else:
                    await conn.executemany(*statement)
            return await conn.fetchval(fetch) if fetch else None
        finally:
            await conn.close()
    return _in_thread(go())


def my_run(statements: Sequence[tuple[str, Sequence[Sequence[object]]]] | Sequence[str],
           fetch: str | None = None) -> Any:
    try:
        conn = pymysql.connect(host=MY_HOST, port=MY_PORT, user=MY_USER, password="",
                               charset="utf8mb4", autocommit=True, connect_timeout=5)
    except pymysql.err.OperationalError as e:
        raise AssertionError(f"MariaDB is not running at {MY_HOST}:{MY_PORT}: {e}") from e
    try:
        with conn.cursor() as cursor:
            for statement in statements:
                if isinstance(statement, str):
                    cursor.execute(statement)
                else:
                    cursor.executemany(*statement)
            if fetch:
                cursor.execute(fetch)
                return cursor.fetchone()[0]
    finally:
        conn.close()
    return None


def pg_conninfo(host: str = PG_HOST, port: int = PG_PORT) -> str:
    return f"conninfo host={host} port={port} user={PG_USER} dbname={PG_DB}\n"


def my_conninfo(database: str, host: str = MY_HOST, port: int = MY_PORT) -> str:
    return f"host {host}\nport {port}\nusername {MY_USER}\ndatabase {database}\n"
