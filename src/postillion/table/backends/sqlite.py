"""`sqlite:/path/to/sqlite.conf`: tables in an SQLite database (docs/tables.md).

CONFIG is a backend-config file (`table/backend_config.py`):

    dbpath tables.sqlite
    query_domain SELECT name FROM domains WHERE name = ?
    query_alias SELECT target FROM virtuals WHERE address = ?
    query_userinfo SELECT uid, gid, home FROM users WHERE name = ?
    query_credentials SELECT name, hash FROM credentials WHERE name = ?

`dbpath` is relative to the config file's directory.  Each query takes one
`?`, bound to the lowercased key: never pasted into the SQL, so a RCPT TO of
`x' OR '1'='1` finds nothing.  At open every query is run once with an empty
key, so a wrong column count (`credentials` wants `user, secret`), a missing
table or a second `?` is an error at start naming `file:line`, not a 451 at
the first message.  The database is opened read-only (`mode=ro`,
`query_only`): a table is never a way to write.

SQLite calls block, so each table has one worker thread that owns its
connection; the event loop only awaits it.  A query still running when the
table timeout (10 s) fires is interrupted, so the thread is free for the next
lookup.  `update table` re-reads the config and swaps in a new connection;
on failure the old one keeps serving.

The connection is reopened when the database file is replaced (another
inode at `dbpath`: the usual "build aside, rename over" of an administrator)
and after any query error: SQLite keeps a schema cache that never recovers
from a database that was briefly empty or damaged, so a lookup that failed
(ERROR, 451) must not condemn every lookup after it.

`fetch_source` (no parameter) lists source addresses, served in turn; the
list is re-read after `fetch_source_expire` seconds (60) or
`fetch_source_refresh` fetches (1000).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, Final, TypeVar

from postillion.table.backend import OneKeyAtATime, Shape
from postillion.table.backend_config import BackendConfig, read_backend_config
from postillion.table.cycle import FETCH_EXPIRE, FETCH_REFRESH, SourceCycle
from postillion.table.errors import BackendError
from postillion.table.services import Service
from postillion.table.sqlshape import JOINED, SQL_SERVICES, columns, describe, rows_to_value
from postillion.table.worker import Worker

T = TypeVar("T")

BUSY_TIMEOUT: Final = 5.0     # seconds SQLite waits on a writer's lock, < table timeout
CLOSE_TIMEOUT: Final = 10.0
KNOWN_KEYS: Final = frozenset(
    {"dbpath", "fetch_source", "fetch_source_expire", "fetch_source_refresh"}
    | {f"query_{service.value}" for service in SQL_SERVICES}
)


class _Database:
    """One generation of the table: its config, thread, connection and queries.

    Everything touching `conn` runs in `worker`'s single thread; `update`
    builds a new generation and retires this one.
    """

    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        self.worker = Worker("postillion-sqlite")
        self.conn: sqlite3.Connection | None = None
        self.queries: dict[Service, str] = {}
        self.fetch_sql: str | None = None
        self.cycle = SourceCycle()
        self._running: object | None = None
        self.dbpath: Path | None = None
        self.identity: tuple[int, int] | None = None

    # ---- in the worker thread

    def setup(self) -> None:
        cfg = read_backend_config(self.config_path, KNOWN_KEYS)
        dbpath = cfg.resolve_path("dbpath")
        self.dbpath = Path(dbpath).absolute()
        try:
            self.connect()
        except (sqlite3.Error, OSError) as e:
            raise BackendError(f"{cfg.where('dbpath')}: {dbpath}: {e}") from None
        for service in sorted(SQL_SERVICES, key=lambda s: s.value):
            key = f"query_{service.value}"
            sql = cfg.get(key)
            if sql is not None:
                self._check(cfg, key, sql, 1, columns(service), describe(service))
                self.queries[service] = sql
        self.fetch_sql = cfg.get("fetch_source")
        if self.fetch_sql is not None:
            self._check(cfg, "fetch_source", self.fetch_sql, 0, 1, "source")
        self.cycle = SourceCycle(cfg.integer("fetch_source_expire", FETCH_EXPIRE),
                                 cfg.integer("fetch_source_refresh", FETCH_REFRESH, minimum=1))
        if not self.queries and self.fetch_sql is None:
            raise BackendError(f"{cfg.path}: no query_<service> and no fetch_source given")

    def connect(self) -> None:
        """(Re)open the database read-only, remembering which file it is."""
        assert self.dbpath is not None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        conn = sqlite3.connect(self.dbpath.as_uri() + "?mode=ro", uri=True,
                               timeout=BUSY_TIMEOUT, isolation_level=None)
        try:
            conn.execute("PRAGMA query_only = ON")
            st = self.dbpath.stat()
        except BaseException:
            conn.close()
            raise
        self.conn, self.identity = conn, (st.st_dev, st.st_ino)

    def ensure_connected(self) -> None:
        """Reconnect after an error or when dbpath is now another file."""
        assert self.dbpath is not None
        try:
            try:
                st = self.dbpath.stat()
            except PermissionError:
                if self.conn is not None:
                    # Opened before the process gave up root, the database
                    # may now sit behind a directory we cannot enter: keep
                    # the connection we have (a replaced file needs a restart).
                    return
                raise
            if self.conn is None or (st.st_dev, st.st_ino) != self.identity:
                self.connect()
        except (sqlite3.Error, OSError) as e:
            raise BackendError(f"sqlite: {self.dbpath}: {e}") from None

    def _check(self, cfg: BackendConfig, key: str, sql: str, params: int, want: int,
               what: str) -> None:
        """Run a query once with an empty key to check it before any mail does."""
        assert self.conn is not None
        where = cfg.where(key)
        try:
            cursor = self.conn.execute(sql, ("",) * params)
            got = len(cursor.description) if cursor.description else 0
            cursor.close()
        except sqlite3.ProgrammingError as e:
            if "bindings" in str(e):
                wanted = 'one "?" (the key)' if params else 'no "?"'
                raise BackendError(f"{where}: {key} must take {wanted}") from None
            raise BackendError(f"{where}: {key}: {e}") from None
        except sqlite3.Error as e:
            raise BackendError(f"{where}: {key}: {e}") from None
        if got == 0:
            raise BackendError(f"{where}: {key} returns no rows (not a SELECT?)")
        if got != want:
            raise BackendError(f"{where}: {key} returns {got} column{'s' * (got != 1)},"
                               f" expected {want} ({what})")

    def query(self, service: Service, sql: str, args: tuple[str, ...]) -> str | None:
        self.ensure_connected()
        assert self.conn is not None
        try:
            cursor = self.conn.execute(sql, args)
            if service in JOINED:
                rows = cursor.fetchall()
            else:
                row = cursor.fetchone()
                rows = [row] if row is not None else []
            cursor.close()
        except UnicodeEncodeError:
            return None       # a key that is not text cannot be in the database
        except sqlite3.Error as e:
            self.conn.close()  # see the module doc: the next lookup reconnects
            self.conn = None
            raise BackendError(f"sqlite: {e}") from None
        return rows_to_value(service, rows)

    def read_sources(self) -> list[str]:
        self.ensure_connected()
        assert self.conn is not None and self.fetch_sql is not None
        try:
            rows = self.conn.execute(self.fetch_sql).fetchall()
        except sqlite3.Error as e:
            raise BackendError(f"sqlite: fetch_source: {e}") from None
        return [value for row in rows if (value := rows_to_value(Service.SOURCE, [row]))]

    # ---- from the event loop

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run fn in the worker thread; interrupt it if we are cancelled."""
        token = object()

        def job() -> T:
            self._running = token
            try:
                return fn(*args)
            finally:
                self._running = None

        try:
            return await self.worker.run(job)
        except asyncio.CancelledError:
            if self._running is token and self.conn is not None:
                self.conn.interrupt()   # thread-safe; frees the worker for the next lookup
            raise

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    async def start(self) -> None:
        try:
            await self.run(self.setup)
        except BaseException:
            self.abandon()
            raise

    async def stop(self) -> None:
        """Close after the lookups already queued, waiting at most 10 s."""
        try:
            await asyncio.wait_for(self.run(self.close), CLOSE_TIMEOUT)
        except (asyncio.TimeoutError, sqlite3.Error):
            pass
        finally:
            self.worker.stop()

    def abandon(self) -> None:
        """Retire without waiting (a failed or timed-out start)."""
        if self.conn is not None:
            self.conn.interrupt()
        self.worker.submit(self.close)
        self.worker.stop()

    async def fetch_source(self) -> str | None:
        return await self.cycle.next(lambda: self.run(self.read_sources))


class SqliteBackend(OneKeyAtATime):
    name: ClassVar[str] = "sqlite"
    services: ClassVar[frozenset[Service]] = SQL_SERVICES

    def __init__(self, config: str | None, *, items: Sequence[str] = (),
                 pairs: Sequence[tuple[str, str]] = (), is_map: bool = False) -> None:
        if not config or items or pairs:
            raise BackendError("an sqlite table needs a backend-config file: sqlite:/path/sqlite.conf")
        self.config_path = config
        self._db: _Database | None = None

    @property
    def shape(self) -> Shape:
        return Shape.QUERY

    def serves(self, service: Service) -> bool:
        if self._db is None:
            return service in self.services
        if service is Service.SOURCE and self._db.fetch_sql is not None:
            return True
        return service in self._db.queries

    def _current(self) -> _Database:
        if self._db is None:
            raise BackendError("table not open")
        return self._db

    async def open(self) -> None:
        db = _Database(self.config_path)
        await db.start()
        self._db = db

    async def update(self) -> None:
        db = _Database(self.config_path)
        await db.start()
        old, self._db = self._db, db
        if old is not None:
            await old.stop()

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.stop()

    async def lookup(self, service: Service, key: str) -> str | None:
        db = self._current()
        sql = db.queries.get(service)
        if sql is None:
            raise BackendError(f"no query_{service.value} in {self.config_path}")
        return await db.run(db.query, service, sql, (key,))

    async def check(self, service: Service, key: str) -> bool:
        return await self.lookup(service, key) is not None

    async def fetch(self, service: Service) -> str | None:
        db = self._current()
        if service is not Service.SOURCE or db.fetch_sql is None:
            raise BackendError(f"no fetch_{service.value} in {self.config_path}")
        return await db.fetch_source()


