"""Scripted SMTP/LMTP peers on loopback for the client's tests.

Each peer is an asyncio server on 127.0.0.1, port 0 (or the host and port
given: an MX listens on port 25 of its own loopback address), in the test's own
event loop.  A connection records every read (to see what the client
pipelined into one write) and every command line; `dialogue` answers a
whole SMTP or LMTP session with replies chosen per recipient, and the
hostile tests write their own handler on the same `Conn`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Self

#: No scripted read waits longer: a test never hangs on a silent client.
READ_TIMEOUT = 5.0


class Conn:
    """One accepted connection: buffered reads, recorded."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()
        self.reads: list[bytes] = []        # every chunk read, as read
        self.lines: list[str] = []          # every command line
        self.messages: list[bytes] = []     # every message body, still stuffed
        self.peer = writer.get_extra_info("peername")

    async def _more(self) -> None:
        data = await asyncio.wait_for(self.reader.read(65536), READ_TIMEOUT)
        if not data:
            raise EOFError
        self.reads.append(data)
        self.buf += data

    async def line(self) -> str:
        while b"\r\n" not in self.buf:
            await self._more()
        end = self.buf.index(b"\r\n")
        line = bytes(self.buf[:end]).decode("utf-8", "replace")
        del self.buf[: end + 2]
        self.lines.append(line)
        return line

    async def data(self) -> bytes:
        """The message after 354, up to and without the final dot line."""
        while True:
            if self.buf.startswith(b".\r\n"):
                end, skip = 0, 3
                break
            end = self.buf.find(b"\r\n.\r\n")
            if end >= 0:
                end, skip = end + 2, 3
                break
            await self._more()
        body = bytes(self.buf[:end])
        del self.buf[: end + skip]
        self.messages.append(body)
        return body

    async def send(self, text: str | bytes) -> None:
        self.writer.write(text.encode() if isinstance(text, str) else text)
        await self.writer.drain()

    async def start_tls(self, ctx: ssl.SSLContext) -> None:
        await self.writer.start_tls(ctx)


Handler = Callable[[Conn], Awaitable[None]]


@dataclass
class Peer:
    """A listening scripted peer; `conns` in accept order."""

    handler: Handler
    host: str = "127.0.0.1"
    port: int = 0
    path: str = ""          # listen on this Unix socket instead (an LMTP server's)
    conns: list[Conn] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    server: asyncio.AbstractServer | None = None
    tasks: set[asyncio.Task] = field(default_factory=set)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(reader, writer)
        self.conns.append(conn)
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self.handler(conn)
        except (TimeoutError, EOFError, ConnectionError, ssl.SSLError):
            pass
        except Exception as e:  # noqa: BLE001  (a script's failure: __aexit__ reports it)
            self.errors.append(e)
        finally:
            self.tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def __aenter__(self) -> Self:
        if self.path:
            self.server = await asyncio.start_unix_server(self._accept, self.path)
            return self
        self.server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):       # scripts still stalling: the test is over
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=2)
        for conn in self.conns:
            conn.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2)
        assert not self.errors, self.errors


def ehlo_reply(keywords: tuple[str, ...], name: str = "peer.example.test") -> str:
    lines = [name, *keywords]
    return "".join(f"250{'-' if i < len(lines) - 1 else ' '}{line}\r\n" for i, line in enumerate(lines))


def rcpt_address(line: str) -> str:
    return line[line.index("<") + 1: line.index(">")]


async def dialogue(conn: Conn, *, keywords: tuple[str, ...] = ("PIPELINING", "8BITMIME"),
                   lmtp: bool = False, rcpt: Callable[[str], str] | None = None,
                   final: Callable[[str], str] | None = None,
                   mail: Callable[[str], str] | None = None,
                   data: str = "354 go ahead\r\n", greet: bool = True) -> None:
    """A well-behaved SMTP (or LMTP) server, replies chosen per recipient.

    `rcpt(address)` is the RCPT reply (default 250); `final(address)` the
    reply after the dot (LMTP: one per accepted recipient; SMTP: asked
    with the first accepted address).  Runs until QUIT or EOF.  `greet`
    False goes on a session already greeted (after STARTTLS).
    """
    if greet:
        await conn.send("220 peer.example.test ESMTP scripted\r\n")
    accepted: list[str] = []
    mail_ok = False
    while True:
        line = await conn.line()
        verb = line[:4].upper()
        if verb in ("EHLO", "LHLO"):
            await conn.send(ehlo_reply(keywords))
        elif verb == "HELO":
            await conn.send("250 peer.example.test\r\n")
        elif verb == "MAIL":
            reply = mail(line) if mail else "250 2.1.0 Ok\r\n"
            mail_ok = reply.startswith("2")
            accepted = []
            await conn.send(reply)
        elif verb == "RCPT":
            if not mail_ok:
                await conn.send("503 5.5.1 MAIL first\r\n")
                continue
            reply = rcpt(rcpt_address(line)) if rcpt else "250 2.1.5 Ok\r\n"
            if reply.startswith("2"):
                accepted.append(rcpt_address(line))
            await conn.send(reply)
        elif verb == "DATA":
            if not accepted:
                await conn.send("554 5.5.1 No valid recipients\r\n")
                continue
            await conn.send(data)
            if not data.startswith("354"):
                continue
            await conn.data()
            if lmtp:
                for address in accepted:
                    await conn.send(final(address) if final else "250 2.0.0 delivered\r\n")
            else:
                await conn.send(final(accepted[0]) if final else "250 2.0.0 queued as 1\r\n")
            accepted, mail_ok = [], False
        elif verb == "RSET":
            accepted, mail_ok = [], False
            await conn.send("250 2.0.0 Reset\r\n")
        elif verb == "QUIT":
            await conn.send("221 2.0.0 Bye\r\n")
            return
        else:
            await conn.send("502 5.5.1 Not implemented\r\n")
