"""One SMTP session: the sans-IO protocol bound to rules, lookup and the queue.

The protocol machine (`protocol.py`) parses and sequences; this module makes
the decisions that need the world: which rule a recipient matches, whether
it expands to real users (at RCPT time, so unknown users get `550 5.1.1`
before any data), AUTH against the listener's credentials, the TLS
handshake, and the durable queue write that must finish before `250`.  A
full spool is a `452 4.3.1` that ends the transaction, not the session: at
MAIL below `Limits.queue_min_free`, and when a write or the commit runs out
of space.

It also owns the clock (docs/smtp.md, Limits): a command or data line must complete
within `Limits.command_timeout` of its first byte (a deadline that trickled
bytes do not push back), a message (the DATA or BDAT phase) within
`command_timeout` plus 1 s per `Limits.min_data_rate` octets received, the
whole session within `Limits.session_timeout`, a TLS handshake within
`Limits.tls_timeout`; the early-talker window and the delay before `535` are
in `smtp/tuning.py`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import ssl
import time

from postillion import log, metrics
from postillion.errors import LookupUnavailable, MailError, Reply
from postillion.lookup.auth import AuthResult
from postillion.queue.envelope import Envelope
from postillion.queue.store import NO_SPACE, Incoming, storage_reply
from postillion.rules import SessionFacts, is_local_address
from postillion.smtp import protocol as p
from postillion.smtp.headers import (HeaderScan, clean, masquerade_from, missing_headers,
                                     received_header, received_local)
from postillion.smtp.context import SessionContext, Submitter, Transaction, features, protocol_limits
from postillion.smtp.recipients import (UNKNOWN_HOST, rcpt_decision,
                                        reverse_dns, session_address)
from postillion.table.match import mailaddr_match
from postillion.table.services import Service
from postillion.tls import describe

READ_SIZE = 64 * 1024

logger = logging.getLogger("postillion.smtp")

REPLY_TIMEOUT = Reply(421, "4.4.2", "Timeout")
REPLY_AUTH_FAILED = Reply(535, "5.7.8", "Authentication failed")
REPLY_AUTH_TEMPFAIL = Reply(454, "4.7.0", "Temporary authentication failure")
REPLY_SENDER_NOT_ALLOWED = Reply(553, "5.7.1", "Sender not allowed")
REPLY_LOOP = Reply(554, "5.4.6", "Routing loop detected")
REPLY_NOT_RFC5322 = Reply(554, "5.6.0", "Message is not RFC 5322 compliant")
REPLY_EARLY_TALKER = Reply(554, "5.5.0", "Protocol error: talking before the greeting")


def _queue_reply(error: OSError | MailError) -> Reply:
    """What the client sees when the queue failed: a TempFail says; a bare
    OSError goes through the queue's one mapping (452 4.3.1 when full)."""
    return error.reply if isinstance(error, MailError) else storage_reply(error)


class Session:
    """Drives one connection from banner to close."""

    def __init__(self, ctx: SessionContext, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, submitter: Submitter | None = None) -> None:
        self.ctx = ctx
        self.submitter = submitter
        self.reader = reader
        self.writer = writer
        self.sid = log.new_id()
        peer = writer.get_extra_info("peername")
        sock = writer.get_extra_info("sockname")
        self.peer = peer[0] if isinstance(peer, tuple) else "local"
        local_ip = sock[0] if isinstance(sock, tuple) else "local"
        self.local_ip = local_ip
        self.hostname = ctx.hostname
        self.facts = SessionFacts(address=self.peer,
                                  is_local=is_local_address(self.peer, local_ip))
        self.smtps = ctx.listen is not None and ctx.listen.smtps
        self.proto = p.ServerProtocol(ctx.hostname, self.peer, protocol_limits(ctx.limits, submitter),
                                      features(ctx.listen), tls=self.smtps)
        self.helo = ""
        self.extended = False
        self.username: str | None = None
        self.tls: tuple[str, str] | None = None
        self.tx: Transaction | None = None
        self._line_started: float | None = None
        self._received = 0                  # octets read from the client
        self._phase: int | None = None      # the protocol's content_phase last seen
        self._phase_clock = (0.0, 0)        # when that phase began, octets read before it
        self.rdns = UNKNOWN_HOST

    async def run(self) -> None:
        # The one count of a session (`show stats` derives smtp.session,
        # .closed and .local|inet4|inet6 from these two: postillion/stats.py).
        metrics.SMTP_SESSIONS.labels(metrics.address_family(self.peer)).inc()
        metrics.SMTP_SESSIONS_ACTIVE.inc()
        try:
            await self._run()
        finally:
            metrics.SMTP_SESSIONS_ACTIVE.dec()

    async def _run(self) -> None:
        self.rdns = await reverse_dns(self.peer, self.ctx.tuning.rdns_timeout)
        log.smtp_connected(self.sid, self.peer, self.rdns)
        reason = "disconnect"
        try:
            if self.smtps:
                # The listener's server did the handshake (start_server(ssl=...)).
                self._tls_established()
            await self._choose_hostname()
            early = await self._early_talker()
            if early is not None:
                reason = early
                return
            self.proto.send_banner()
            reason = await self._loop()
        except (ConnectionError, OSError) as e:
            reason = f"io-error: {e}"
        except asyncio.TimeoutError:
            reason = "timeout"
        finally:
            await self._abort_transaction()
            log.smtp_disconnected(self.sid, reason)
            await self._close()

    async def _choose_hostname(self) -> None:
        """`hostnames <t>`: the name to announce for the local address the
        client reached (addrname, docs/tables.md); the listener's hostname when
        the table has none or cannot answer."""
        if self.ctx.hostnames is None:
            return
        try:
            found = await self.ctx.hostnames.lookup(Service.ADDRNAME, self.local_ip)
        except LookupUnavailable as e:
            log.event(self.sid, "smtp", "lookup-error", address=self.local_ip, reason=e.reason)
            return
        if found is not None and found.name:
            self.hostname = self.proto.hostname = found.name

    async def _early_talker(self) -> str | None:
        """Wait the banner delay; a client that speaks first is refused."""
        tuning = self.ctx.tuning
        delay = tuning.banner_delay_local if self.facts.is_local else tuning.banner_delay
        if delay <= 0:
            return None
        try:
            data = await asyncio.wait_for(self.reader.read(1), delay)
        except asyncio.TimeoutError:
            return None
        if not data:
            return "disconnect"
        log.smtp_bad_input(self.sid, REPLY_EARLY_TALKER)
        self.writer.write(REPLY_EARLY_TALKER.to_bytes())
        await asyncio.wait_for(self.writer.drain(), self.ctx.limits.command_timeout)
        return "early-talker"

    async def _starttls(self) -> bool:
        """Answer STARTTLS and do the handshake; False closes the session.

        Reading stops *before* the 220 goes out: whatever was received until
        then was sent before the client could see the 220, so it is plaintext
        pipelined after STARTTLS, and is dropped with the stream's buffer
        (RFC 3207 §5; CVE-2011-0411's class of bug).  What comes after the
        220 -- the ClientHello -- stays in the socket for the TLS layer,
        which resumes reading.  Without the pause, a ClientHello read into
        the stream buffer would be lost and the handshake would hang.
        """
        if self.ctx.tls_context is None:
            return False
        transport = self.writer.transport
        transport.pause_reading()
        pending = getattr(self.reader, "_buffer", None)
        if isinstance(pending, bytearray):
            pending.clear()
        self.proto.send(p.READY_TLS)
        await self._flush()
        try:
            await asyncio.wait_for(self.writer.start_tls(self.ctx.tls_context),
                                   self.ctx.limits.tls_timeout)
        except (ssl.SSLError, ConnectionError, OSError, asyncio.TimeoutError) as e:
            log.smtp_tls_failure(self.sid, str(e) or type(e).__name__)
            return False
        self._tls_established()
        return True

    def _tls_established(self) -> None:
        self.tls = describe(self.writer.get_extra_info("ssl_object"))
        self.facts = dataclasses.replace(self.facts, tls=self.tls is not None)
        if self.tls is not None:
            log.smtp_tls(self.sid, self.tls[0], self.tls[1])

    def _read_timeout(self, deadline: float) -> float:
        """Seconds the next read may wait: the line deadline, the message's
        (content phase) and the session's."""
        now = time.monotonic()
        limits = self.ctx.limits
        limit = limits.command_timeout
        if self._line_started is not None:
            limit -= now - self._line_started
        if self._phase is not None:
            # Postfix's smtpd_min_data_rate: each octet read buys the
            # client 1/min_data_rate s more, however it cuts them into lines.
            started, before = self._phase_clock
            allowed = limits.command_timeout + (self._received - before) / limits.min_data_rate
            limit = min(limit, started + allowed - now)
        return max(0.0, min(limit, deadline - now))

    def _track_phase(self, last_read: int) -> None:
        """Note when a message-content phase begins: now, when the machine
        first asks for its bytes (our 354 or our lookups are not the
        client's time), counting the last read, which may hold a chunk."""
        phase = self.proto.content_phase
        if phase != self._phase:
            self._phase = phase
            self._phase_clock = (time.monotonic(), self._received - last_read)

    async def _loop(self) -> str:
        deadline = time.monotonic() + self.ctx.limits.session_timeout
        held = 0          # octets the machine held right after the last read
        read_at = 0.0
        last_read = 0     # octets in the last read
        while True:
            event = self.proto.next_event()
            if event is p.NEED_DATA:
                await self._flush()
                if self.proto.should_close:
                    return "disconnect"
                buffered = self.proto.buffered
                if not buffered:
                    self._line_started = None
                elif buffered < held or self._line_started is None:
                    # A line was consumed: what is left started in the last read.
                    self._line_started = read_at
                self._track_phase(last_read)
                try:
                    # asyncio.timeout, not wait_for: no task per read (the hot path).
                    async with asyncio.timeout(self._read_timeout(deadline)):
                        data = await self.reader.read(READ_SIZE)
                except TimeoutError:
                    self.proto.send(REPLY_TIMEOUT)
                    await self._flush()
                    return "timeout"
                read_at, last_read = time.monotonic(), len(data)
                self._received += last_read
                self.proto.receive_data(data)
                held = self.proto.buffered
                continue
            if isinstance(event, p.Quit):
                await self._flush()
                return "quit"
            if isinstance(event, p.ConnectionClosed):
                await self._flush()
                return event.reason or "disconnect"
            if isinstance(event, p.StartTls):
                if not await self._starttls():
                    return "tls-failure"
                self.proto.tls_started()
                self.helo, self.extended, self.username = "", False, None
                self.facts = dataclasses.replace(self.facts, authenticated=False, user="")
                held, self._line_started = 0, None
                continue
            if not await self._handle(event):
                await self._flush()
                return "io-error: queue"

    async def _handle(self, event: object) -> bool:
        """Answer one event; False ends the session (after a 421)."""
        logger.debug("%s smtp event %s", self.sid, type(event).__name__)   # `ctl trace smtp`
        proto = self.proto
        if isinstance(event, p.Helo):
            await self._abort_transaction()
            self.helo, self.extended = event.domain, event.extended
            proto.send(proto.helo_reply(event))
        elif isinstance(event, p.Auth):
            await self._auth(event)
        elif isinstance(event, p.MailFrom):
            await self._mail(event)
        elif isinstance(event, p.RcptTo):
            await self._rcpt(event)
        elif isinstance(event, p.DataStart):
            return await self._data_start()
        elif isinstance(event, p.DataChunk):
            return await self._chunk(event.data)
        elif isinstance(event, p.DataEnd):
            return await self._end(event.too_big, "DATA")
        elif isinstance(event, p.BdatEnd):
            failed = self.tx is not None and self.tx.failed is not None
            if event.too_big or event.last or failed:
                return await self._end(event.too_big, f"BDAT {event.chunk}")
            proto.send(Reply(250, "2.0.0", f"{event.chunk} octets received"))
        elif isinstance(event, p.Reset):
            await self._abort_transaction()
        elif isinstance(event, p.CommandRejected):
            log.smtp_failed_command(self.sid, event.command, event.reply)
        return True

    # -- AUTH -----------------------------------------------------------------

    async def _auth(self, event: p.Auth) -> None:
        """RFC 4616 §2: authzid must be empty or the user; 535 after a delay."""
        if event.authzid and event.authzid != event.username:
            result = AuthResult.PERMFAIL
        elif self.ctx.authenticator is None:
            result = AuthResult.TEMPFAIL
        else:
            result = await self.ctx.authenticator.check(event.username, event.password)
        log.smtp_authentication(self.sid, event.username, result.value)
        if result is AuthResult.OK:
            self.username = event.username
            self.facts = dataclasses.replace(self.facts, authenticated=True, user=event.username)
            self.proto.send(p.AUTH_OK)
            return
        reply = REPLY_AUTH_TEMPFAIL if result is AuthResult.TEMPFAIL else REPLY_AUTH_FAILED
        if result is AuthResult.PERMFAIL:
            await asyncio.sleep(random.uniform(0, self.ctx.tuning.auth_failure_delay))
        log.smtp_failed_command(self.sid, f"AUTH {event.mechanism} (...)", reply)
        self.proto.send(reply)

    # -- transaction ------------------------------------------------------------

    def _address(self, path: p.Path) -> str:
        return session_address(path, self.hostname)

    async def _mail(self, event: p.MailFrom) -> None:
        await self._abort_transaction()
        sender = self._address(event.sender) if event.sender else ""
        if self._spool_full(int(event.params.get("SIZE") or 0)):
            log.smtp_failed_command(self.sid, f"MAIL FROM:<{sender}>", NO_SPACE)
            self._refuse_message(NO_SPACE)
            return
        if self.username is not None and self.ctx.senders is not None:
            reply = await self._check_sender(sender)
            if reply is not None:
                log.smtp_failed_command(self.sid, f"MAIL FROM:<{sender}>", reply)
                self._refuse_message(reply)
                return
        self.tx = Transaction(sender=sender, params=dict(event.params),
                              headers=HeaderScan(self.ctx.tuning.header_scan_limit),
                              held=bytearray() if self._masquerades(sender) else None)
        self.proto.send(p.OK)

    def _spool_full(self, size: int) -> bool:
        """`queue min-free`: refuse a transaction the spool has no room for,
        before the client sends it -- free space below the reserve, or below
        the reserve plus the SIZE= declared.  The reserve keeps room for the
        mail already accepted (envelope updates, bounces).

        A statvfs that fails is logged and lets MAIL through: the check only
        spares the client a doomed transfer; the write path still refuses
        what does not fit.
        """
        try:
            free = self.ctx.store.free_space()
        except OSError as e:
            log.event(self.sid, "smtp", "queue-error", reason=f"statvfs: {e}")
            return False
        need = self.ctx.limits.queue_min_free + size
        if free >= need:
            return False
        log.event(self.sid, "smtp", "queue-full", free=free, needed=need)
        return True

    async def _check_sender(self, sender: str) -> Reply | None:
        """`senders <t>`: the AUTH user's mailaddrmap must allow MAIL FROM.

        *Choice:* the null sender is refused too: a submission client never
        needs to send a bounce.
        """
        assert self.ctx.senders is not None and self.username is not None
        try:
            allowed = await self.ctx.senders.lookup(Service.MAILADDRMAP, self.username.lower())
        except LookupUnavailable as e:
            log.event(self.sid, "smtp", "lookup-error", user=self.username, reason=e.reason)
            return Reply(451, "4.3.0", f"Temporary failure: <{sender}>")
        delim = self.ctx.limits.sub_addr_delim
        if sender and allowed is not None and any(
                mailaddr_match(pattern, sender, delim) for pattern in allowed.patterns):
            return None
        return REPLY_SENDER_NOT_ALLOWED

    async def _rcpt(self, event: p.RcptTo) -> None:
        assert self.tx is not None
        rcpt = self._address(event.rcpt)
        decision = await rcpt_decision(self.ctx.ruleset, self.ctx.expander, self.facts,
                                       self.tx.sender, rcpt)
        reply = decision.reply
        if decision.lookup_error:
            log.event(self.sid, "smtp", "lookup-error", rcpt=log.path(rcpt), reason=decision.reason)
        elif decision.reason:   # why, for the administrator (a .forward, a loop...)
            log.event(self.sid, "smtp", "expand-error", rcpt=log.path(rcpt), reason=decision.reason)
        if reply.is_positive:
            self.tx.recipients.append((rcpt, decision.deliveries, dict(event.params)))
        else:
            log.smtp_failed_command(self.sid, f"RCPT TO:<{rcpt}>", reply)
            metrics.RECIPIENTS_REFUSED.labels(metrics.status_label(reply.code, reply.enhanced)).inc()
        self.proto.send(reply)

    async def _open_message(self, tx: Transaction) -> Reply | None:
        """Create the queue file and write our Received: header first;
        the reply owed if that failed."""
        try:
            tx.incoming = incoming = await self.ctx.store.create()
            rcpts = [rcpt for rcpt, _, _ in tx.recipients]
            listen = self.ctx.listen
            if self.submitter is not None:
                incoming.write(received_local(self.hostname, incoming.msgid, rcpts,
                                              self.submitter.uid, self.submitter.name))
                return None
            incoming.write(received_header(
                self.helo, self.peer, self.hostname, incoming.msgid, rcpts, self.extended,
                rdns=self.rdns, tls=self.tls, user=self.username,
                show_auth=listen is not None and listen.received_auth,
                smtputf8=self.proto.smtputf8, mask_src=listen is not None and listen.mask_src))
        except (OSError, MailError) as e:
            log.event(self.sid, "smtp", "queue-error", reason=str(e))
            return _queue_reply(e)
        return None

    async def _data_start(self) -> bool:
        assert self.tx is not None
        refusal = await self._open_message(self.tx)
        if refusal is not None:
            self.proto.send(refusal)  # in order, after queued replies
            return refusal.code != 421
        self.proto.send(p.START_DATA)
        return True

    async def _chunk(self, data: bytes) -> bool:
        tx = self.tx
        if tx is None or tx.failed is not None:
            return True
        if tx.incoming is None:
            tx.failed = await self._open_message(tx)
            if tx.failed is not None:
                return True  # BDAT: the chunk's reply says so
        assert tx.incoming is not None and tx.headers is not None
        end = tx.headers.feed(data)
        if tx.held is not None:
            # masquerade: hold the header until it is whole, then rewrite it.
            tx.held += data
            if not tx.headers.done:
                return True
            data, tx.held = bytes(tx.held), None
            # Found again in the whole held header: no piece boundary matters.
            blank = data.find(b"\r\n\r\n")
            end = 0 if data.startswith(b"\r\n") else blank + 2 if blank >= 0 else None
            if end is not None:
                head = masquerade_from(data[:end], tx.sender)
                data, end = head + data[end:], len(head)
        if end is not None and self._completes_headers():
            data = data[:end] + missing_headers(tx.headers, self.hostname) + data[end:]
        tx.incoming.write(data)
        if tx.incoming.error is not None:
            # The rest is read and dropped; the partial message goes now,
            # freeing its space, and the end of the data gets the reply.
            log.event(self.sid, "smtp", "queue-error", reason=str(tx.incoming.error))
            tx.failed = storage_reply(tx.incoming.error)
            await self.ctx.store.discard(tx.incoming)
        return True

    def _masquerades(self, sender: str) -> bool:
        listen = self.ctx.listen
        return (listen is not None and listen.masquerade and self.username is not None
                and bool(sender))

    def _completes_headers(self) -> bool:
        """docs/smtp.md, Headers added: on port 587 and authenticated sessions, a missing
        Date: or Message-ID: is added (RFC 6409 §8)."""
        listen = self.ctx.listen
        return self.username is not None or self.submitter is not None or \
            (listen is not None and listen.effective_port == 587)

    async def _end(self, too_big: bool, command: str) -> bool:
        """End of DATA or the LAST chunk (or a chunk too big): refuse or queue."""
        tx, self.tx = self.tx, None
        assert tx is not None
        if not too_big and tx.failed is None and tx.incoming is None:
            tx.failed = await self._open_message(tx)   # BDAT 0 LAST: no chunk came
        if tx.failed is not None:
            if tx.incoming is not None:
                await self.ctx.store.discard(tx.incoming)
            log.smtp_failed_command(self.sid, command, tx.failed)
            self._refuse_message(tx.failed)
            return tx.failed.code != 421
        if tx.held and tx.incoming is not None:
            tx.incoming.write(bytes(tx.held))  # a message that is all header: as sent
        headers = tx.headers
        reply = None
        if too_big:
            reply = p.TOO_BIG
        elif headers is not None and headers.hops >= self.ctx.limits.max_hops:
            reply = REPLY_LOOP
        elif headers is not None and headers.bad_first_line:
            reply = REPLY_NOT_RFC5322
        if reply is not None:
            if tx.incoming is not None:
                await self.ctx.store.discard(tx.incoming)
            log.smtp_failed_command(self.sid, command, reply)
            self._refuse_message(reply)
            return True
        incoming = tx.incoming
        assert incoming is not None
        envelopes = self._envelopes(tx, incoming)
        try:
            await self.ctx.store.commit(incoming, envelopes)
        except (OSError, MailError) as e:
            log.event(self.sid, "smtp", "queue-error", reason=str(e))
            reply = _queue_reply(e)
            log.smtp_failed_command(self.sid, command, reply)
            self._refuse_message(reply)  # in order, after queued replies
            return reply.code != 421
        for env in envelopes:
            log.smtp_envelope(self.sid, env.id, env.sender, env.dest)
        submitter = self.submitter
        log.smtp_message(self.sid, incoming.msgid, incoming.size, len(envelopes), self._proto_name(),
                         user=submitter.name if submitter else None,
                         uid=submitter.uid if submitter else None)
        self.proto.send(Reply(250, "2.0.0", f"{incoming.msgid:08x} Message accepted for delivery"))
        metrics.MESSAGES_ACCEPTED.inc()
        return True

    def _refuse_message(self, reply: Reply) -> None:
        """Refuse the transaction with `reply`, counted by its code."""
        metrics.MESSAGES_REFUSED.labels(metrics.status_label(reply.code, reply.enhanced)).inc()
        self.proto.send(reply)

    def _proto_name(self) -> str:
        name = "ESMTP" if self.extended else "SMTP"
        return name + ("S" if self.tls else "") + ("A" if self.username else "")

    def _envelopes(self, tx: Transaction, incoming: Incoming) -> list[Envelope]:
        now = time.time()
        flags = set()
        if self.facts.authenticated:
            flags.add("authenticated")
        if self.tls is not None:
            flags.add("tls")
        if "SMTPUTF8" in tx.params:
            flags.add("smtputf8")
        out = []
        for rcpt, deliveries, params in tx.recipients:
            notify = params.get("NOTIFY", "")
            for d in deliveries:
                out.append(incoming.envelope(
                    dispatcher=d.dispatcher, type=d.agent,
                    smtpname=self.hostname, helo=clean(self.helo), hostname=self.rdns,
                    sockaddr=self.peer, sender=tx.sender, rcpt=rcpt, dest=d.dest,
                    ctime=now, mda_user=d.user, mda_subaddress=d.subaddress, mda_exec=d.exec,
                    username=self.submitter.name if self.submitter else self.username or "",
                    flags=frozenset(flags),
                    dsn_notify=frozenset(notify.split(",")) if notify else frozenset(),
                    dsn_ret=tx.params.get("RET", ""), dsn_envid=tx.params.get("ENVID", ""),
                    dsn_orcpt=params.get("ORCPT", ""),
                    ttl=d.ttl if d.ttl is not None else self.ctx.queue_ttl,
                    tag=self.ctx.listen.tag if self.ctx.listen is not None and self.ctx.listen.tag else ""))
        return out

    async def _abort_transaction(self) -> None:
        tx, self.tx = self.tx, None
        if tx is not None and tx.incoming is not None:
            await self.ctx.store.discard(tx.incoming)

    async def _flush(self) -> None:
        data = self.proto.data_to_send()
        if data:
            self.writer.write(data)
        async with asyncio.timeout(self.ctx.limits.command_timeout):
            await self.writer.drain()

    async def _close(self) -> None:
        try:
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (ConnectionError, OSError, asyncio.TimeoutError, ssl.SSLError):
            pass
