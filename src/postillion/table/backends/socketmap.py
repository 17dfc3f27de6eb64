"""`socketmap:`: lookups asked of a server over Sendmail/Postfix netstrings.

    table aliases socketmap:/run/maps.sock
    table aliases socketmap:unix:/run/maps.sock
    table aliases socketmap:inet:127.0.0.1:8000       (or inet:[::1]:8000)

The protocol is Sendmail's and Postfix's (docs/tables.md, socketmap): each
request is one netstring `LEN:NAME KEY,` where NAME is the service
(`alias`, `domain`, `userinfo`...), so one server can answer every service;
each reply is one netstring holding `OK value`, `NOTFOUND `, or `TEMP`,
`TIMEOUT`, `PERM` and a reason.  The key goes as is after the first space:
netstrings are counted, not delimited, so a key holding `:` or `,` cannot
break the framing.

Framing is read strictly: the length is 1 to 6 ASCII digits (replies are at
most `MAX_REPLY` octets), then `:`, exactly that many octets, then `,`.
Anything else -- a reply too long, a missing comma, an unknown status, a
connection closed mid-reply -- is a `BackendError` and the connection is
dropped: a garbled reply is never taken for a value.  `TEMP`, `TIMEOUT` and
`PERM` are errors too (temporary for the mail: an outage never bounces).

Connections are kept open and reused, one request at a time each, up to
`POOL_SIZE` per table; one that failed or was cancelled mid-request is
closed, since its framing can no longer be trusted.  A server that is down
costs each lookup a connect attempt (`CONNECT_TIMEOUT`), nothing more; the
next lookup after it returns simply connects.

A key whose request would exceed `MAX_REQUEST` octets, or that is not
UTF-8, cannot be asked: it finds nothing.  The server cannot list, so
`fetch` is an error.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

from postillion.table.backend import OneKeyAtATime, Shape
from postillion.table.errors import BackendError, printable
from postillion.table.services import Service

MAX_REQUEST: Final = 10_000       # octets in a request's netstring payload
MAX_REPLY: Final = 100_000        # octets in a reply's netstring payload
IO_TIMEOUT: Final = 100.0         # seconds for one request's write and read
CONNECT_TIMEOUT: Final = 5.0      # seconds to connect; below the table timeout
POOL_SIZE: Final = 4              # connections kept open per table
_LEN_DIGITS: Final = len(str(MAX_REPLY))

# Everything a socketmap can answer by key (fetch needs a list it cannot give).
SOCKETMAP_SERVICES: Final = frozenset(s for s in Service if s is not Service.SOURCE)


@dataclass(frozen=True, slots=True)
class SocketmapAddress:
    """Where the server listens: a Unix socket path, or host and port."""

    path: str | None = None
    host: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"inet:{host}:{self.port}"


def parse_address(config: str) -> SocketmapAddress:
    """`/path`, `unix:/path`, `inet:host:port` or `inet:[v6]:port`."""
    if config.startswith("inet:"):
        host, sep, port = config[5:].rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not (port.isascii() and port.isdigit()) \
                or not 0 < int(port) < 65536:
            raise BackendError(f"socketmap: {config!r}: expected inet:HOST:PORT")
        return SocketmapAddress(host=host, port=int(port))
    path = config.removeprefix("unix:")
    if not path.startswith("/"):
        raise BackendError(f"socketmap: {config!r}: expected /path, unix:/path or inet:HOST:PORT")
    return SocketmapAddress(path=path)


def netstring(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


async def read_netstring(reader: asyncio.StreamReader, limit: int) -> bytes:
    """One netstring's payload, read strictly; BackendError if it is not one."""
    digits = b""
    while True:
        c = await reader.read(1)
        if not c:
            raise BackendError("socketmap: connection closed by the server")
        if c == b":":
            break
        if not (b"0" <= c <= b"9") or len(digits) >= _LEN_DIGITS:
            raise BackendError("socketmap: malformed netstring length in the reply")
        digits += c
    if not digits:
        raise BackendError("socketmap: malformed netstring length in the reply")
    length = int(digits)
    if length > limit:
        raise BackendError(f"socketmap: reply of {length} octets, more than {limit}")
    try:
        data = await reader.readexactly(length + 1)
    except asyncio.IncompleteReadError:
        raise BackendError("socketmap: connection closed in the middle of a reply") from None
    if data[-1:] != b",":
        raise BackendError("socketmap: netstring in the reply does not end with ','")
    return data[:-1]


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


class SocketmapBackend(OneKeyAtATime):
    name: ClassVar[str] = "socketmap"
    services: ClassVar[frozenset[Service]] = SOCKETMAP_SERVICES

    def __init__(self, config: str | None, *, items: Sequence[str] = (),
                 pairs: Sequence[tuple[str, str]] = (), is_map: bool = False) -> None:
        if not config or items or pairs:
            raise BackendError("a socketmap table needs an address: socketmap:/path"
                               " or socketmap:inet:HOST:PORT")
        self.address = parse_address(config)
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(POOL_SIZE)
        self._closed = False

    @property
    def shape(self) -> Shape:
        return Shape.QUERY

    def serves(self, service: Service) -> bool:
        return service in self.services

    async def open(self) -> None:
        """Connect once, so that `check` and start-up see a wrong address."""
        self._closed = False
        conn = await self._connect()
        self._idle.append(conn)

    async def update(self) -> None:
        """Drop idle connections: the next lookups reconnect."""
        self._drop_idle()

    async def close(self) -> None:
        self._closed = True
        self._drop_idle()

    def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                if self.address.path is not None:
                    reader, writer = await asyncio.open_unix_connection(
                        self.address.path, limit=MAX_REPLY + 16)
                else:
                    reader, writer = await asyncio.open_connection(
                        self.address.host, self.address.port, limit=MAX_REPLY + 16)
        except TimeoutError:
            raise BackendError(f"socketmap: {self.address}: connect timed out") from None
        except (OSError, socket.gaierror) as e:
            raise BackendError(f"socketmap: {self.address}: {e.strerror or e}") from None
        return _Connection(reader, writer)

    async def _ask(self, service: Service, key: str) -> tuple[str, str] | None:
        """(status, text) of the server's reply; None if the key cannot be asked."""
        try:
            payload = f"{service.value} {key}".encode()
        except UnicodeEncodeError:
            return None
        if len(payload) > MAX_REQUEST:
            return None
        if self._closed:
            raise BackendError("table closed")
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self._connect()
            ok = False
            try:
                async with asyncio.timeout(IO_TIMEOUT):
                    conn.writer.write(netstring(payload))
                    await conn.writer.drain()
                    reply = await read_netstring(conn.reader, MAX_REPLY)
                ok = True
            except TimeoutError:
                raise BackendError(f"socketmap: no reply in {IO_TIMEOUT:g} s") from None
            except OSError as e:
                raise BackendError(f"socketmap: {self.address}: {e.strerror or e}") from None
            finally:
                if ok and not self._closed:
                    self._idle.append(conn)
                else:
                    conn.close()
        return _parse_reply(reply)

    async def lookup(self, service: Service, key: str) -> str | None:
        answer = await self._ask(service, key)
        if answer is None:
            return None
        status, text = answer
        if status == "NOTFOUND":
            return None
        if not text:
            raise BackendError("socketmap: OK reply without a value")
        return text

    async def check(self, service: Service, key: str) -> bool:
        answer = await self._ask(service, key)
        return answer is not None and answer[0] == "OK"


def _parse_reply(reply: bytes) -> tuple[str, str]:
    """("OK", value) or ("NOTFOUND", ""); BackendError for anything else."""
    try:
        text = reply.decode("utf-8")
    except UnicodeDecodeError:
        raise BackendError("socketmap: reply is not UTF-8") from None
    status, _, rest = text.partition(" ")
    if status == "OK":
        return status, rest
    if status == "NOTFOUND":
        return status, ""
    if status in ("TEMP", "TIMEOUT", "PERM"):
        raise BackendError(f"socketmap: server says {status} {printable(rest, limit=200)}")
    raise BackendError(f"socketmap: unknown reply status {printable(status, limit=40)}")
