"""`redis:/path/to/redis.conf`: tables in a Redis server (docs/tables.md).

CONFIG is a backend-config file (`table/backend_config.py`):

    master 127.0.0.1                 # IP, host name or unix:/path
    master_port 6379
    slave 192.0.2.8                  # optional; asked when the master fails
    slave_port 6379
    database 0
    password s3cret
    query_alias GET alias:%s
    query_userinfo HMGET user:%s uid gid home
    query_domain SISMEMBER domains %s
    fetch_source LRANGE sources 0 -1
    pool_size 8
    connect_timeout 2
    query_timeout 5

A service without `query_<service>` is asked with `GET <service>:%s`.  A
query is split into words on blanks; `%s` inside a word is replaced by the
lowercased key, and each word goes to Redis as one argument, so a key with
blanks, quotes or CR/LF is one argument and finds nothing.

Replies: a string is the value; an array is joined `, ` (alias,
mailaddrmap), `:` (credentials, userinfo), else its first element is taken;
an integer (SISMEMBER, EXISTS) non-zero is a match (its value, for a
lookup, is the key itself); nil, an empty string or an empty array is
NOT_FOUND.  An array with some nils is an error (a half-filled user hash).

Each table keeps a pool of at most `pool_size` connections (8); a lookup
waits for a free one, and each connect and each command are bounded by
`connect_timeout` (2 s) and `query_timeout` (5 s), below the table timeout
(10 s).  A failure (refused, reset, timeout) asks the slave if there is
one, else is a BackendError (451 4.3.0); the broken connection is dropped
and the next lookup connects again, so the table recovers by itself when
the server returns.  `update table` re-reads the config and swaps in a new
pool, closing the old one once the lookups using it are done; on failure
the old one keeps serving.

`fetch_source` (no `%s`) lists source addresses, served in turn and re-read
after `fetch_source_expire` seconds (60) or `fetch_source_refresh` fetches
(1000), like the SQL backends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from postillion.table.backend import OneKeyAtATime, Shape
from postillion.table.backend_config import BackendConfig, read_backend_config
from postillion.table.cycle import FETCH_EXPIRE, FETCH_REFRESH, SourceCycle
from postillion.table.errors import BackendError, printable
from postillion.table.services import Service

DEFAULT_PORT: Final = 6379
DEFAULT_HOST: Final = "127.0.0.1"
POOL_SIZE: Final = 8
CONNECT_TIMEOUT: Final = 2.0
QUERY_TIMEOUT: Final = 5.0

REDIS_SERVICES: Final = frozenset(s for s in Service if s is not Service.AUTH)
JOIN_COMMA: Final = frozenset({Service.ALIAS, Service.MAILADDRMAP})
JOIN_COLON: Final = frozenset({Service.CREDENTIALS, Service.USERINFO})
# Services whose lookup wants a value, not a mere match.
VALUE_WANTED: Final = frozenset({Service.ALIAS, Service.CREDENTIALS, Service.USERINFO,
                                 Service.ADDRNAME, Service.MAILADDRMAP, Service.RELAYHOST})
KNOWN_KEYS: Final = frozenset(
    {"master", "master_port", "slave", "slave_port", "database", "password",
     "pool_size", "connect_timeout", "query_timeout",
     "fetch_source", "fetch_source_expire", "fetch_source_refresh"}
    | {f"query_{s.value}" for s in REDIS_SERVICES if s is not Service.SOURCE}
)


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """One parse of the backend-config file, every default filled in."""

    master: str = DEFAULT_HOST
    master_port: int = DEFAULT_PORT
    slave: str | None = None
    slave_port: int = DEFAULT_PORT
    database: int = 0
    password: str | None = None
    pool_size: int = POOL_SIZE
    connect_timeout: float = CONNECT_TIMEOUT
    query_timeout: float = QUERY_TIMEOUT
    queries: dict[Service, tuple[str, ...]] = field(default_factory=dict)
    fetch_source: tuple[str, ...] | None = None
    fetch_expire: int = FETCH_EXPIRE
    fetch_refresh: int = FETCH_REFRESH


def _port(cfg: BackendConfig, key: str) -> int:
    port = cfg.integer(key, DEFAULT_PORT, minimum=1)
    if port > 65535:
        raise BackendError(f'{cfg.where(key)}: "{key}" wants a port number')
    return port


def parse_settings(cfg: BackendConfig) -> RedisSettings:
    queries = {}
    for service in REDIS_SERVICES - {Service.SOURCE}:
        text = cfg.get(f"query_{service.value}")
        if text is not None:
            words = tuple(text.split())
            if "%s" not in text:
                raise BackendError(f"{cfg.where(f'query_{service.value}')}: query_{service.value}"
                                   ' has no "%s" (the key)')
            queries[service] = words
    fetch = cfg.get("fetch_source")
    return RedisSettings(
        master=cfg.get("master") or DEFAULT_HOST,
        master_port=_port(cfg, "master_port"),
        slave=cfg.get("slave"),
        slave_port=_port(cfg, "slave_port"),
        database=cfg.integer("database", 0),
        password=cfg.get("password"),
        pool_size=cfg.integer("pool_size", POOL_SIZE, minimum=1),
        connect_timeout=float(cfg.integer("connect_timeout", int(CONNECT_TIMEOUT), minimum=1)),
        query_timeout=float(cfg.integer("query_timeout", int(QUERY_TIMEOUT), minimum=1)),
        queries=queries,
        fetch_source=tuple(fetch.split()) if fetch else None,
        fetch_expire=cfg.integer("fetch_source_expire", FETCH_EXPIRE),
        fetch_refresh=cfg.integer("fetch_source_refresh", FETCH_REFRESH, minimum=1),
    )


def _client(settings: RedisSettings, host: str, port: int) -> aioredis.Redis:
    """A client over its own bounded pool; commands are not retried beyond one reconnect."""
    common: dict[str, Any] = {
        "db": settings.database, "password": settings.password,
        "socket_connect_timeout": settings.connect_timeout,
        "socket_timeout": settings.query_timeout,
        "retry": Retry(NoBackoff(), 1),
        "max_connections": settings.pool_size, "timeout": settings.query_timeout,
    }
    if host.startswith("unix:"):
        pool = aioredis.BlockingConnectionPool(
            connection_class=aioredis.UnixDomainSocketConnection, path=host[5:], **common)
    else:
        pool = aioredis.BlockingConnectionPool(host=host, port=port, **common)
    return aioredis.Redis(connection_pool=pool)


def _words(words: tuple[str, ...], key: str) -> list[str] | None:
    """The command's arguments; None if the key cannot be sent (not UTF-8)."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return [w.replace("%s", key) for w in words]


class _Generation:
    """One config's clients and fetch state; `update` builds a new one."""

    def __init__(self, config_path: str, settings: RedisSettings) -> None:
        self.config_path = config_path
        self.settings = settings
        self.master = _client(settings, settings.master, settings.master_port)
        self.slave = (_client(settings, settings.slave, settings.slave_port)
                      if settings.slave else None)
        self.cycle = SourceCycle(settings.fetch_expire, settings.fetch_refresh)
        self.active = 0
        self.drained = asyncio.Event()
        self.drained.set()

    async def command(self, args: list[str]) -> Any:
        """Run one command on the master, then the slave; BackendError if none answers."""
        self.active += 1
        self.drained.clear()
        try:
            try:
                return await self._on(self.master, args)
            except BackendError:
                if self.slave is None:
                    raise
            return await self._on(self.slave, args)
        finally:
            self.active -= 1
            if self.active == 0:
                self.drained.set()

    async def retire(self) -> None:
        """Close once the commands in flight are done (closing the pool under
        them would leave lookups waiting for connections that never return)."""
        try:
            await asyncio.wait_for(self.drained.wait(), self.settings.query_timeout * 2)
        except TimeoutError:
            pass
        await self.close()

    async def _on(self, client: aioredis.Redis, args: list[str]) -> Any:
        try:
            async with asyncio.timeout(self.settings.query_timeout):
                return await client.execute_command(*args)
        except TimeoutError:
            raise BackendError(f"redis: no reply in {self.settings.query_timeout:g} s") from None
        except ResponseError as e:
            raise BackendError(f"redis: {printable(str(e), limit=200)}") from None
        except (RedisError, OSError) as e:
            raise BackendError(f"redis: {type(e).__name__}: {printable(str(e), limit=200)}") from None

    async def close(self) -> None:
        for client in (self.master, self.slave):
            if client is not None:
                await client.aclose(close_connection_pool=True)


def _text(item: Any) -> str:
    if isinstance(item, bytes):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            raise BackendError("redis: value is not UTF-8") from None
    if isinstance(item, (int, float)):
        return str(item)
    raise BackendError(f"redis: unexpected {type(item).__name__} in a reply")


def reply_to_value(service: Service, key: str, reply: Any) -> str | None:
    """The raw value of a reply for `service`; None for NOT_FOUND (module doc)."""
    if reply is None:
        return None
    if isinstance(reply, int) and not isinstance(reply, bool):
        if reply == 0:
            return None
        if service in VALUE_WANTED:
            raise BackendError(f"redis: an integer reply cannot be a {service.value} value")
        return key
    if isinstance(reply, set):
        reply = sorted(reply)
    if isinstance(reply, (list, tuple)):
        if all(item is None for item in reply):
            return None
        if any(item is None for item in reply):
            raise BackendError("redis: the reply has missing fields")
        parts = [_text(item) for item in reply]
        if service in JOIN_COMMA:
            return ", ".join(parts)
        if service in JOIN_COLON:
            return ":".join(parts)
        return parts[0] or None
    return _text(reply) or None


class RedisBackend(OneKeyAtATime):
    name: ClassVar[str] = "redis"
    services: ClassVar[frozenset[Service]] = REDIS_SERVICES

    def __init__(self, config: str | None, *, items: Sequence[str] = (),
                 pairs: Sequence[tuple[str, str]] = (), is_map: bool = False) -> None:
        if not config or items or pairs:
            raise BackendError("a redis table needs a backend-config file: redis:/path/redis.conf")
        self.config_path = config
        self._gen: _Generation | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def shape(self) -> Shape:
        return Shape.QUERY

    def serves(self, service: Service) -> bool:
        if service is Service.SOURCE:
            return self._gen is None or self._gen.settings.fetch_source is not None
        return service in self.services

    async def _build(self) -> _Generation:
        cfg = await asyncio.to_thread(read_backend_config, self.config_path, KNOWN_KEYS)
        gen = _Generation(self.config_path, parse_settings(cfg))
        try:
            reply = await gen.command(["PING"])
            if reply not in (True, b"PONG", "PONG"):
                raise BackendError(f"redis: unexpected reply to PING: {reply!r}")
        except BackendError as e:
            await gen.close()
            raise BackendError(f"{cfg.where('master')}: {e}") from None
        return gen

    async def open(self) -> None:
        self._gen = await self._build()

    async def update(self) -> None:
        gen = await self._build()
        old, self._gen = self._gen, gen
        if old is not None:         # closed in the background once its lookups end
            task = asyncio.get_running_loop().create_task(old.retire())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        gen, self._gen = self._gen, None
        if gen is not None:
            await gen.close()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    def _current(self) -> _Generation:
        if self._gen is None:
            raise BackendError("table not open")
        return self._gen

    async def lookup(self, service: Service, key: str) -> str | None:
        gen = self._current()
        words = gen.settings.queries.get(service, ("GET", f"{service.value}:%s"))
        args = _words(words, key)
        if args is None:
            return None
        return reply_to_value(service, key, await gen.command(args))

    async def check(self, service: Service, key: str) -> bool:
        gen = self._current()
        words = gen.settings.queries.get(service, ("GET", f"{service.value}:%s"))
        args = _words(words, key)
        if args is None:
            return False
        reply = await gen.command(args)
        if isinstance(reply, int):
            return reply != 0
        if isinstance(reply, (list, tuple)):
            return any(item is not None for item in reply)
        return reply is not None and reply != b""

    async def fetch(self, service: Service) -> str | None:
        gen = self._current()
        words = gen.settings.fetch_source
        if service is not Service.SOURCE or words is None:
            raise BackendError(f"no fetch_{service.value} in {self.config_path}")

        async def read() -> list[str]:
            reply = await gen.command(list(words))
            if reply is None:
                items: list[Any] = []
            elif isinstance(reply, (list, tuple, set)):
                items = list(reply)
            else:
                items = [reply]
            return [t for t in (_text(i) for i in items if i is not None) if t]

        return await gen.cycle.next(read)


