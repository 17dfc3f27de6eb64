"""One client connection's bytes and the TLS contexts it may use.

Part of `session.py`, the asyncio driver of the client machine.  `Stream`
is a plain asyncio.Protocol rather than a StreamReader so the octets
received and not yet read can be counted: when STARTTLS's handshake
starts there must be none, or they came before TLS and would be read as
if they came through it.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import ssl

from postillion.tls import MINIMUM_VERSION


@functools.lru_cache(maxsize=8)
def system_context(ca_file: str | None) -> ssl.SSLContext:
    """A verifying context: the system's CA bundle, or `ca_file`; built once
    per file (loading a bundle costs milliseconds)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = MINIMUM_VERSION
    return ctx


@functools.lru_cache(maxsize=1)
def opportunistic_context() -> ssl.SSLContext:
    """Opportunistic STARTTLS: encryption without checking who signed."""
    return _unverified()


def _unverified() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = MINIMUM_VERSION
    return ctx


def client_cert_contexts(ca_file: str | None, cert: str, key: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The verifying and the opportunistic context of a relay that presents
    a client certificate (`relay ... pki NAME`): new ones, not the shared
    cached contexts, which must never carry a certificate.  ssl.SSLError or
    OSError when the pair does not load."""
    verified = ssl.create_default_context(cafile=ca_file)
    verified.minimum_version = MINIMUM_VERSION
    unverified = _unverified()
    for ctx in (verified, unverified):
        ctx.load_cert_chain(cert, key)
    return verified, unverified


def is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class Stream(asyncio.Protocol):
    """One connection's bytes: a bounded receive buffer (reading pauses
    above `limit`) and write flow control (`drain`)."""

    def __init__(self, limit: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.error: BaseException | None = None
        self.lost = False
        self._limit = limit
        self._buf = bytearray()
        self._eof = False
        self._paused = False
        self._write_paused = False
        self._reader: asyncio.Future[None] | None = None
        self._drainer: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) >= self._limit and not self._paused and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = self.lost = True
        self.error = exc
        self._wake()
        if self._drainer is not None and not self._drainer.done():
            self._drainer.set_exception(ConnectionResetError("connection lost"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drainer is not None and not self._drainer.done():
            self._drainer.set_result(None)

    def _wake(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    async def read(self) -> bytes:
        """What arrived (at least one octet), or b"" at EOF."""
        if not self._buf and not self._eof:
            self._reader = asyncio.get_running_loop().create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        data = bytes(self._buf)
        self._buf.clear()
        if self._paused and not self.lost and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    async def drain(self) -> None:
        if self.lost:
            raise ConnectionResetError("connection lost")
        if self._write_paused:
            self._drainer = asyncio.get_running_loop().create_future()
            try:
                await self._drainer
            finally:
                self._drainer = None
