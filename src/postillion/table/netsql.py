"""What the networked SQL backends (postgres, mysql) share (docs/tables.md).

A networked SQL table is one backend-config file, read by the shared parser
(`backend_config.py`): the connection keys of its server, the `query_<service>`
and `fetch_source` keys of every SQL backend, and three pool settings:

    pool_size 4          connections kept per table (lookups beyond wait)
    connect_timeout 5    seconds to connect and log in
    query_timeout 5      seconds one query may take

A driver module (`backends/postgres.py`, `backends/mysql.py`) only knows how
to connect, check a query at open and run one; this module owns the rest so
both behave alike:

* **The pool** is ours, not the driver's: a semaphore of `pool_size` slots
  and a stack of idle connections.  A connection whose query failed, timed
  out or was cancelled (the table's 10 s timeout) is closed on the spot and
  never returned, so a half-read reply can never answer the next lookup.
  Connections are made when a lookup needs one (the first at open, for
  the checks) and kept while they work: a server that was down is simply
  connected to again by the next lookup, which is how the table recovers
  without a restart.
* **Outage = BackendError**: a refused, reset, cut or stalled connection, a
  query timeout, an SQL error -- all are `BackendError`, which the `Table`
  turns into a temporary failure (451 4.3.0), never "not found".
* **One retry** on a fresh connection when a connection taken from the idle
  stack turns out dead (the server restarted since): a restart then costs
  no lookup a 451.
* **Keys no text column can hold** (a NUL, a lone surrogate) are "not found"
  without asking the server.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Generic, Protocol, TypeVar

from postillion.table.backend import OneKeyAtATime, Shape
from postillion.table.backend_config import BackendConfig, read_backend_config
from postillion.table.cycle import FETCH_EXPIRE, FETCH_REFRESH, SourceCycle
from postillion.table.errors import BackendError
from postillion.table.services import Service
from postillion.table.sqlshape import JOINED, SQL_SERVICES, columns, describe, rows_to_value

C = TypeVar("C")
T = TypeVar("T")

POOL_SIZE: Final = 4            # connections per table
CONNECT_TIMEOUT: Final = 5      # seconds; with query_timeout below the table's 10 s
QUERY_TIMEOUT: Final = 5        # seconds
FETCH_SOURCE_EXPIRE: Final = FETCH_EXPIRE     # seconds before fetch_source is run again
FETCH_SOURCE_REFRESH: Final = FETCH_REFRESH   # fetches before fetch_source is run again
CLOSE_TIMEOUT: Final = 2.0      # seconds a polite close may take before it is cut

SQL_KEYS: Final = frozenset(
    {"fetch_source", "fetch_source_expire", "fetch_source_refresh",
     "pool_size", "connect_timeout", "query_timeout"}
    | {f"query_{service.value}" for service in SQL_SERVICES}
)


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """How many connections a table keeps and how long it waits for them."""

    size: int = POOL_SIZE
    connect_timeout: float = CONNECT_TIMEOUT
    query_timeout: float = QUERY_TIMEOUT

    @classmethod
    def from_config(cls, cfg: BackendConfig) -> PoolSettings:
        return cls(size=cfg.integer("pool_size", POOL_SIZE, minimum=1),
                   connect_timeout=cfg.integer("connect_timeout", CONNECT_TIMEOUT, minimum=1),
                   query_timeout=cfg.integer("query_timeout", QUERY_TIMEOUT, minimum=1))


class Driver(Protocol[C]):
    """One server's client library, as the pool and the backend need it."""

    async def connect(self) -> C:
        """A new logged-in connection; any exception is an outage."""

    def alive(self, conn: C) -> bool:
        """Whether an idle connection still looks usable (no I/O)."""

    def abort(self, conn: C) -> None:
        """Close at once, without talking to the server."""

    async def close(self, conn: C) -> None:
        """Close politely (at `close()` of the table)."""

    async def columns(self, conn: C, sql: str, params: int, where: str, key: str) -> int:
        """The column count of `sql`, checking it takes `params` parameters.

        Raises BackendError naming `where` (file:line) and `key` if the
        query is wrong (not its server being down: that raises anything).
        """

    async def rows(self, conn: C, sql: str, args: tuple[str, ...],
                   every: bool) -> Sequence[Sequence[object]]:
        """Run a checked query: every row, or at most the first."""

    def stale(self, error: Exception) -> bool:
        """Whether `error` says the connection was dead, not the query wrong."""


class Pool(Generic[C]):
    """At most `size` connections to one server, connected on demand."""

    def __init__(self, driver: Driver[C], settings: PoolSettings, label: str) -> None:
        self.driver = driver
        self.settings = settings
        self.label = label
        self._slots = asyncio.Semaphore(settings.size)
        self._idle: list[C] = []
        self._closed = False

    async def _connect(self) -> C:
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                return await self.driver.connect()
        except TimeoutError:
            raise BackendError(f"{self.label}: connect timed out after"
                               f" {self.settings.connect_timeout:g} s") from None
        except BackendError:
            raise
        except Exception as e:  # noqa: BLE001 -- any driver failure here is an outage
            raise BackendError(f"{self.label}: cannot connect: {_reason(e)}") from None

    async def use(self, job: Callable[[C], Awaitable[T]]) -> T:
        """Run `job` on a connection of the pool, within the query timeout."""
        if self._closed:
            raise BackendError(f"{self.label}: table closed")
        async with self._slots:
            for attempt in (1, 2):
                conn = None
                while self._idle and conn is None:
                    candidate = self._idle.pop()
                    if self.driver.alive(candidate):
                        conn = candidate
                    else:
                        self.driver.abort(candidate)
                reused = conn is not None
                if conn is None:
                    conn = await self._connect()
                try:
                    async with asyncio.timeout(self.settings.query_timeout):
                        result = await job(conn)
                except TimeoutError:
                    self.driver.abort(conn)
                    raise BackendError(f"{self.label}: query timed out after"
                                       f" {self.settings.query_timeout:g} s") from None
                except BackendError:
                    self.driver.abort(conn)
                    raise
                except Exception as e:  # noqa: BLE001 -- every driver error is an ERROR
                    self.driver.abort(conn)
                    if reused and attempt == 1 and self.driver.stale(e):
                        # The server went away since: the other idle ones
                        # are as dead; once more, on a fresh connection.
                        idle, self._idle = self._idle, []
                        for other in idle:
                            self.driver.abort(other)
                        continue
                    raise BackendError(f"{self.label}: {_reason(e)}") from None
                except BaseException:   # cancelled (the table timeout): never reuse
                    self.driver.abort(conn)
                    raise
                if self._closed:
                    self.driver.abort(conn)
                else:
                    self._idle.append(conn)
                return result
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """Close idle connections; busy ones are closed when their query ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self.driver.close(conn)
            except Exception:  # noqa: BLE001 -- closing: cut what does not close
                self.driver.abort(conn)

    def __len__(self) -> int:
        """Idle connections (for tests: nothing is left stuck)."""
        return len(self._idle)


def _reason(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return f"{type(error).__name__}: {text}" if type(error).__name__ not in text else text


def storable(key: str) -> bool:
    """Whether a text column could hold `key` (no NUL, valid UTF-8)."""
    if "\x00" in key:
        return False
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Generation(Generic[C]):
    """One reading of the config: its pool, checked queries and source list."""

    def __init__(self, pool: Pool[C], queries: dict[Service, str], fetch_sql: str | None,
                 fetch_expire: int, fetch_refresh: int) -> None:
        self.pool = pool
        self.queries = queries
        self.fetch_sql = fetch_sql
        self.cycle = SourceCycle(fetch_expire, fetch_refresh)

    async def fetch_source(self) -> str | None:
        sql = self.fetch_sql
        assert sql is not None

        async def read() -> list[str]:
            rows = await self.pool.use(lambda conn: self.pool.driver.rows(conn, sql, (), True))
            return [v for row in rows if (v := rows_to_value(Service.SOURCE, [row]))]

        return await self.cycle.next(read)


class NetSqlBackend(OneKeyAtATime, abc.ABC):
    """The Backend of a networked SQL table; subclasses name their driver."""

    name: ClassVar[str] = ""
    services: ClassVar[frozenset[Service]] = SQL_SERVICES
    connection_keys: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: str | None, *, items: Sequence[str] = (),
                 pairs: Sequence[tuple[str, str]] = (), is_map: bool = False) -> None:
        if not config or items or pairs:
            raise BackendError(f"a {self.name} table needs a backend-config file:"
                               f" {self.name}:/path/{self.name}.conf")
        self.config_path = config
        self._gen: _Generation[Any] | None = None

    @abc.abstractmethod
    def make_driver(self, cfg: BackendConfig, settings: PoolSettings) -> Driver[Any]:
        """The subclass's driver (asyncpg, aiomysql) for this config."""

    @property
    def shape(self) -> Shape:
        return Shape.QUERY

    def serves(self, service: Service) -> bool:
        if self._gen is None:
            return service in self.services
        if service is Service.SOURCE and self._gen.fetch_sql is not None:
            return True
        return service in self._gen.queries

    @property
    def pool(self) -> Pool[Any] | None:
        """The current pool (for tests and `check`)."""
        return self._gen.pool if self._gen else None

    def _current(self) -> _Generation[Any]:
        if self._gen is None:
            raise BackendError("table not open")
        return self._gen

    async def _start(self) -> _Generation[Any]:
        cfg = await asyncio.to_thread(read_backend_config, self.config_path,
                                      SQL_KEYS | self.connection_keys)
        settings = PoolSettings.from_config(cfg)
        pool: Pool[Any] = Pool(self.make_driver(cfg, settings), settings, self.name)
        try:
            queries: dict[Service, str] = {}
            for service in sorted(SQL_SERVICES, key=lambda s: s.value):
                key = f"query_{service.value}"
                sql = cfg.get(key)
                if sql is not None:
                    await self._check(pool, cfg, key, sql, 1, columns(service), describe(service))
                    queries[service] = sql
            fetch_sql = cfg.get("fetch_source")
            if fetch_sql is not None:
                await self._check(pool, cfg, "fetch_source", fetch_sql, 0, 1, "source")
            if not queries and fetch_sql is None:
                raise BackendError(f"{cfg.path}: no query_<service> and no fetch_source given")
            return _Generation(pool, queries, fetch_sql,
                               cfg.integer("fetch_source_expire", FETCH_SOURCE_EXPIRE),
                               cfg.integer("fetch_source_refresh", FETCH_SOURCE_REFRESH,
                                           minimum=1))
        except BaseException:
            await pool.close()
            raise

    @staticmethod
    async def _check(pool: Pool[Any], cfg: BackendConfig, key: str, sql: str, params: int,
                     want: int, what: str) -> None:
        """Check a query against the server before any mail depends on it."""
        where = cfg.where(key)
        got = await pool.use(lambda conn: pool.driver.columns(conn, sql, params, where, key))
        if got == 0:
            raise BackendError(f"{where}: {key} returns no rows (not a SELECT?)")
        if got != want:
            raise BackendError(f"{where}: {key} returns {got} column{'s' * (got != 1)},"
                               f" expected {want} ({what})")

    async def open(self) -> None:
        self._gen = await self._start()

    async def update(self) -> None:
        gen = await self._start()
        old, self._gen = self._gen, gen
        if old is not None:
            await old.pool.close()

    async def close(self) -> None:
        gen, self._gen = self._gen, None
        if gen is not None:
            await gen.pool.close()

    async def lookup(self, service: Service, key: str) -> str | None:
        gen = self._current()
        sql = gen.queries.get(service)
        if sql is None:
            raise BackendError(f"no query_{service.value} in {self.config_path}")
        if not storable(key):
            return None
        every = service in JOINED
        rows = await gen.pool.use(lambda conn: gen.pool.driver.rows(conn, sql, (key,), every))
        return rows_to_value(service, rows)

    async def check(self, service: Service, key: str) -> bool:
        return await self.lookup(service, key) is not None

    async def fetch(self, service: Service) -> str | None:
        gen = self._current()
        if service is not Service.SOURCE or gen.fetch_sql is None:
            raise BackendError(f"no fetch_{service.value} in {self.config_path}")
        return await gen.fetch_source()


