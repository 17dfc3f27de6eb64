"""One SMTP session: the sans-IO protocol bound to rules, lookup and the queue.

The protocol machine (`protocol.py`) parses and sequences; this module makes
the decisions that need the world: which rule a recipient matches, whether
it expands to real users (at RCPT time, so unknown users get `550 5.1.1`
before any data), and the durable queue write that must finish before `250`.
It also owns the clock: every read waits at most `Limits.command_timeout`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Sequence

from postillion import log
from postillion.config.model import Limits
from postillion.errors import LookupUnavailable, MailError, Reply
from postillion.lookup.expand import Delivery, Expander
from postillion.queue.envelope import Envelope
from postillion.queue.store import Incoming, QueueStore
from postillion.rules import Ruleset, SessionFacts, is_local_address
from postillion.smtp import protocol as p

READ_SIZE = 64 * 1024

REPLY_RCPT_OK = Reply(250, "2.1.5", "Destination address valid: Recipient ok")
REPLY_MAIL_OK = Reply(250, "2.0.0", "Ok")
REPLY_DATA = Reply(354, "", 'Enter mail, end with "." on a line by itself')
REPLY_TOO_BIG = Reply(552, "5.3.4", "Message too big for system")
REPLY_QUEUE_ERROR = Reply(421, "4.3.0", "Temporary Error")
REPLY_TIMEOUT = Reply(421, "4.4.2", "Timeout")


@dataclass(frozen=True, slots=True)
class SessionContext:
    """What every session of one listener shares."""

    hostname: str
    limits: Limits
    ruleset: Ruleset
    expander: Expander
    store: QueueStore   # hands committed envelopes to the scheduler itself (on_commit)


@dataclass(slots=True)
class Transaction:
    """The MAIL ... DATA transaction in progress."""

    sender: str
    recipients: list[tuple[str, list[Delivery]]] = field(default_factory=list)
    incoming: Incoming | None = None


def protocol_limits(limits: Limits) -> p.ProtocolLimits:
    return p.ProtocolLimits(
        max_line=limits.max_line, max_data_line=limits.max_data_line,
        max_message_size=limits.max_message_size, max_rcpt=limits.max_rcpt,
        max_mails=limits.max_mails, max_failed_commands=limits.max_failed_commands)


def received_header(helo: str, peer: str, hostname: str, msgid: int, rcpts: Sequence[str],
                    extended: bool) -> bytes:
    """The `Received:` trace header of SPEC §7.5 (RFC 5321 §4.4)."""
    helo = "".join(ch if 0x21 <= ord(ch) < 0x7F else "?" for ch in helo) or "unknown"
    literal = f"IPv6:{peer}" if ":" in peer else peer
    lines = [f"Received: from {helo} (<unknown> [{literal}])",
             f"\tby {hostname} (Postillion) with {'ESMTP' if extended else 'SMTP'} id {msgid:08x}"]
    if len(rcpts) == 1:
        lines.append(f"\tfor <{rcpts[0]}>;")
    else:
        lines[-1] += ";"
    lines.append(f"\t{formatdate(localtime=False, usegmt=False)}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


class Session:
    """Drives one connection from banner to close."""

    def __init__(self, ctx: SessionContext, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.ctx = ctx
        self.reader = reader
        self.writer = writer
        self.sid = log.new_id()
        peer = writer.get_extra_info("peername")
        sock = writer.get_extra_info("sockname")
        self.peer = peer[0] if isinstance(peer, tuple) else "local"
        local_ip = sock[0] if isinstance(sock, tuple) else "local"
        self.facts = SessionFacts(address=self.peer,
                                  is_local=is_local_address(self.peer, local_ip))
        self.proto = p.ServerProtocol(ctx.hostname, self.peer, protocol_limits(ctx.limits))
        self.helo = ""
        self.extended = False
        self.tx: Transaction | None = None

    async def run(self) -> None:
        log.smtp_connected(self.sid, self.peer, "<unknown>")
        reason = "disconnect"
        try:
            self.proto.send_banner()
            reason = await self._loop()
        except (ConnectionError, OSError) as e:
            reason = f"io-error: {e}"
        finally:
            await self._abort_transaction()
            log.smtp_disconnected(self.sid, reason)
            await self._close()

    async def _loop(self) -> str:
        deadline = time.monotonic() + self.ctx.limits.session_timeout
        while True:
            event = self.proto.next_event()
            if event is p.NEED_DATA:
                await self._flush()
                if self.proto.should_close:
                    return "disconnect"
                timeout = min(self.ctx.limits.command_timeout, deadline - time.monotonic())
                try:
                    data = await asyncio.wait_for(self.reader.read(READ_SIZE), max(timeout, 0))
                except asyncio.TimeoutError:
                    self.proto.send(REPLY_TIMEOUT)
                    await self._flush()
                    return "timeout"
                self.proto.receive_data(data)
                continue
            if isinstance(event, p.Quit):
                await self._flush()
                return "quit"
            if isinstance(event, p.ConnectionClosed):
                await self._flush()
                return event.reason or "disconnect"
            if not await self._handle(event):
                await self._flush()
                return "io-error: queue"

    async def _handle(self, event: object) -> bool:
        """Answer one event; False ends the session (after a 421)."""
        proto = self.proto
        if isinstance(event, p.Helo):
            await self._abort_transaction()
            self.helo, self.extended = event.domain, event.extended
            proto.send(proto.helo_reply(event))
        elif isinstance(event, p.MailFrom):
            await self._abort_transaction()
            self.tx = Transaction(sender=self._address(event.sender) if event.sender else "")
            proto.send(REPLY_MAIL_OK)
        elif isinstance(event, p.RcptTo):
            await self._rcpt(event)
        elif isinstance(event, p.DataStart):
            return await self._data_start()
        elif isinstance(event, p.DataChunk):
            if self.tx is not None and self.tx.incoming is not None:
                self.tx.incoming.write(event.data)
        elif isinstance(event, p.DataEnd):
            return await self._data_end(event)
        elif isinstance(event, p.Reset):
            await self._abort_transaction()
        elif isinstance(event, p.CommandRejected):
            log.smtp_failed_command(self.sid, event.command, event.reply)
        return True

    def _address(self, path: p.Path) -> str:
        """A path without a domain gets our hostname (`<postmaster>`, SPEC §6.3)."""
        return f"{path.local}@{path.domain or self.ctx.hostname}"

    async def _rcpt(self, event: p.RcptTo) -> None:
        assert self.tx is not None
        rcpt = self._address(event.rcpt)
        reply: Reply
        try:
            action = await self.ctx.ruleset.match(self.facts, self.tx.sender, rcpt)
            if action is None:
                reply = Reply(550, "5.7.1", f"Invalid recipient: <{rcpt}>")
            else:
                deliveries = await self.ctx.expander.expand(rcpt, action)
                self.tx.recipients.append((rcpt, deliveries))
                reply = REPLY_RCPT_OK
        except LookupUnavailable as e:
            log.event(self.sid, "smtp", "lookup-error", rcpt=log.path(rcpt), reason=e.reason)
            reply = Reply(451, "4.3.0", f"Temporary failure: <{rcpt}>")
        except MailError as e:
            reply = e.reply
        if not reply.is_positive:
            log.smtp_failed_command(self.sid, f"RCPT TO:<{rcpt}>", reply)
        self.proto.send(reply)

    async def _data_start(self) -> bool:
        assert self.tx is not None
        try:
            self.tx.incoming = incoming = await self.ctx.store.create()
            rcpts = [rcpt for rcpt, _ in self.tx.recipients]
            incoming.write(received_header(self.helo, self.peer, self.ctx.hostname,
                                           incoming.msgid, rcpts, self.extended))
        except (OSError, MailError) as e:
            log.event(self.sid, "smtp", "queue-error", reason=str(e))
            self.proto.send(REPLY_QUEUE_ERROR)  # in order, after queued replies
            return False
        self.proto.send(REPLY_DATA)
        return True

    async def _data_end(self, event: p.DataEnd) -> bool:
        tx, self.tx = self.tx, None
        assert tx is not None and tx.incoming is not None
        if event.too_big:
            await self.ctx.store.discard(tx.incoming)
            log.smtp_failed_command(self.sid, "DATA", REPLY_TOO_BIG)
            self.proto.send(REPLY_TOO_BIG)
            return True
        incoming = tx.incoming
        envelopes = self._envelopes(tx, incoming)
        try:
            await self.ctx.store.commit(incoming, envelopes)
        except (OSError, MailError) as e:
            log.event(self.sid, "smtp", "queue-error", reason=str(e))
            self.proto.send(REPLY_QUEUE_ERROR)  # in order, after queued replies
            return False
        for env in envelopes:
            log.smtp_envelope(self.sid, env.id, env.sender, env.dest)
        log.smtp_message(self.sid, incoming.msgid, incoming.size, len(envelopes),
                         "ESMTP" if self.extended else "SMTP")
        self.proto.send(Reply(250, "2.0.0", f"{incoming.msgid:08x} Message accepted for delivery"))
        return True

    def _envelopes(self, tx: Transaction, incoming: Incoming) -> list[Envelope]:
        now = time.time()
        out = []
        for rcpt, deliveries in tx.recipients:
            for d in deliveries:
                out.append(incoming.envelope(
                    dispatcher=d.dispatcher, type="mda",
                    smtpname=self.ctx.hostname, helo=self.helo, hostname="<unknown>",
                    sockaddr=self.peer, sender=tx.sender, rcpt=rcpt, dest=d.dest,
                    ctime=now, mda_user=d.user, mda_subaddress=d.subaddress,
                    flags=frozenset({"authenticated"} if self.facts.authenticated else set())))
        return out

    async def _abort_transaction(self) -> None:
        tx, self.tx = self.tx, None
        if tx is not None and tx.incoming is not None:
            await self.ctx.store.discard(tx.incoming)

    async def _flush(self) -> None:
        data = self.proto.data_to_send()
        if data:
            self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), self.ctx.limits.command_timeout)

    async def _close(self) -> None:
        try:
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (ConnectionError, OSError, asyncio.TimeoutError):
            pass

