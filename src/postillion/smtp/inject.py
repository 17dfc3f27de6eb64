"""Local injection: a message enters the queue through an SMTP session with
ourselves, as OpenSMTPD's bounces do.

A delivery status notification (and `postillion sendmail`) must go
where any local mail to that address goes: through the rules (`from local`),
recipient expansion, the `Received:` header, the durable commit and the
`smtp` log lines.  Rather than a second path that would drift from the
first, the message is sent over a socketpair to a real `Session` built on
the listener-less context (`from local`, no AUTH, no TLS), by a client that
speaks just enough SMTP to a peer it knows.  What the session answers is
what the injector gets: `250` means the message is queued, durably.

A `sendmail` submission names its local user (`Submitter`, from the control
socket's peer credentials): that session writes the `Received: ... from
userid` header and records the user on the envelopes, and the message is
queued for all its recipients or none -- a refused recipient ends the
transaction before DATA, so the user who retries sends nobody a copy twice.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from postillion.errors import Reply
from postillion.smtp.context import SessionContext, Submitter
from postillion.smtp.session import Session

#: The whole exchange, from the banner to the reply after the dot, must end
#: within this many seconds (a commit waits for a disk flush, nothing else).
INJECT_TIMEOUT: Final = 120.0
#: Longest reply line the injector reads from our own session.
MAX_REPLY_LINE: Final = 4096
#: Most lines of one reply (EHLO's keywords are the longest).
MAX_REPLY_LINES: Final = 64
#: The message is written in pieces of this size.
WRITE_CHUNK: Final = 64 * 1024

#: Refused recipients a submission's one reply names (the rest are counted).
MAX_REFUSALS_NAMED: Final = 20

_CLIENT_NAME: Final = "localhost"


@dataclass(frozen=True, slots=True)
class InjectResult:
    """What the local session answered: one reply per recipient (in order),
    and the reply to the end of data (None when no recipient was accepted or
    an earlier step failed; `failed` then says which reply ended it)."""

    rcpt_replies: tuple[Reply, ...]
    final: Reply | None
    failed: Reply | None = None

    @property
    def queued(self) -> bool:
        return self.final is not None and self.final.code == 250

    @property
    def reply(self) -> Reply:
        """The one reply that sums it up: the end of data's, else the one
        that refused (the first refused recipient when none was accepted)."""
        if self.final is not None:
            return self.final
        if self.failed is not None:
            return self.failed
        return next((r for r in self.rcpt_replies if r.code != 250),
                    Reply(451, "4.3.0", "Not queued"))


class _ProtocolError(Exception):
    pass


async def inject(ctx: SessionContext, sender: str, rcpts: Sequence[str], message: bytes,
                 timeout: float = INJECT_TIMEOUT, *,
                 submitter: Submitter | None = None) -> InjectResult:
    """Queue `message` from `sender` ("" for `<>`) to `rcpts` through a local
    session on `ctx`, submitted by `submitter` (None: a bounce).  Never
    raises for an SMTP refusal: the replies say it; a broken exchange
    (timeout, our session closing) gives a `451 4.3.0`."""
    ours, theirs = socket.socketpair()
    server_reader, server_writer = await asyncio.open_connection(sock=ours)
    session = asyncio.create_task(
        Session(ctx, server_reader, server_writer, submitter=submitter).run())
    reader, writer = await asyncio.open_connection(sock=theirs, limit=MAX_REPLY_LINE)
    try:
        async with asyncio.timeout(timeout):
            return await _exchange(reader, writer, sender, rcpts, message,
                                   every_rcpt=submitter is not None)
    except (asyncio.TimeoutError, OSError, _ProtocolError, asyncio.IncompleteReadError) as e:
        return InjectResult((), None, Reply(451, "4.3.0", f"Local injection failed: {type(e).__name__}"))
    finally:
        writer.close()
        try:
            await asyncio.wait_for(asyncio.shield(session), 10)
        except (asyncio.TimeoutError, Exception):
            session.cancel()


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sender: str,
                    rcpts: Sequence[str], message: bytes, every_rcpt: bool = False) -> InjectResult:
    if (banner := await _reply(reader)).code != 220:
        return InjectResult((), None, banner)
    ehlo = await _command(reader, writer, f"EHLO {_CLIENT_NAME}")
    if ehlo.code != 250:
        return InjectResult((), None, ehlo)
    utf8 = not (sender.isascii() and all(r.isascii() for r in rcpts))
    mail = await _command(reader, writer, f"MAIL FROM:<{sender}>" + (" SMTPUTF8" if utf8 else ""))
    if mail.code != 250:
        return InjectResult((), None, mail)
    replies = []
    for rcpt in rcpts:
        replies.append(await _command(reader, writer, f"RCPT TO:<{rcpt}>"))
    if not any(r.code == 250 for r in replies):
        await _quit(reader, writer)
        return InjectResult(tuple(replies), None, refusals(rcpts, replies) if every_rcpt else None)
    if every_rcpt and any(r.code != 250 for r in replies):
        await _quit(reader, writer)
        return InjectResult(tuple(replies), None, refusals(rcpts, replies))
    data = await _command(reader, writer, "DATA")
    if data.code != 354:
        return InjectResult(tuple(replies), None, data)
    for piece in _stuffed(message):
        writer.write(piece)
        await writer.drain()
    writer.write(b".\r\n")
    final = await _reply(reader)
    await _quit(reader, writer)
    return InjectResult(tuple(replies), final)


def refusals(rcpts: Sequence[str], replies: Sequence[Reply]) -> Reply:
    """One reply for every refused recipient: the code and enhanced code of
    the first permanent refusal (else the first temporary one: retrying
    cannot help while one is refused for good), and each refusal's text,
    naming its recipient, joined by `; `."""
    refused = [(rcpt, r) for rcpt, r in zip(rcpts, replies) if r.code != 250]
    first = next((r for _, r in refused if r.code >= 500), refused[0][1])
    texts = [r.text if f"<{rcpt}>" in r.text else f"<{rcpt}>: {r.text}"
             for rcpt, r in refused[:MAX_REFUSALS_NAMED]]
    if len(refused) > MAX_REFUSALS_NAMED:
        texts.append(f"and {len(refused) - MAX_REFUSALS_NAMED} more")
    return Reply(first.code, first.enhanced, "; ".join(texts))


def _stuffed(message: bytes) -> list[bytes]:
    """The message as DATA carries it: CRLF line ends, leading dots doubled,
    a final CRLF; in pieces of about WRITE_CHUNK."""
    lines = message.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out, piece, size = [], [], 0
    for line in lines:
        line = line.rstrip(b"\r")
        if line.startswith(b"."):
            line = b"." + line
        piece.append(line + b"\r\n")
        size += len(line) + 2
        if size >= WRITE_CHUNK:
            out.append(b"".join(piece))
            piece, size = [], 0
    if piece:
        out.append(b"".join(piece))
    return out


async def _command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: str) -> Reply:
    if "\r" in line or "\n" in line:
        raise _ProtocolError("CR or LF in a command")
    writer.write(line.encode("utf-8") + b"\r\n")
    await writer.drain()
    return await _reply(reader)


async def _quit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await _command(reader, writer, "QUIT")
    except (OSError, _ProtocolError, asyncio.IncompleteReadError):
        pass


async def _reply(reader: asyncio.StreamReader) -> Reply:
    """One (possibly multi-line) reply of our own session."""
    texts = []
    for _ in range(MAX_REPLY_LINES):
        try:
            raw = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError as e:
            raise _ProtocolError("reply line too long") from e
        line = raw[:-2].decode("utf-8", "replace")
        if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in ("", " ", "-"):
            raise _ProtocolError(f"malformed reply {line[:40]!r}")
        texts.append(line[4:])
        if line[3:4] != "-":
            code = int(line[:3])
            if not 200 <= code <= 599:
                raise _ProtocolError(f"reply code out of range {code}")
            first = texts[0]
            enhanced, _, rest = first.partition(" ")
            if enhanced.count(".") == 2 and enhanced.replace(".", "").isdigit():
                return Reply(code, enhanced, rest, tuple(texts[1:]))
            return Reply(code, "", first, tuple(texts[1:]))
    raise _ProtocolError("reply with too many lines")
