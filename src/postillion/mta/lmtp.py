"""The `lmtp` delivery method: hand local mail to an LMTP server (RFC 2033).

`action NAME lmtp HOST:PORT|/socket [rcpt-to]` (docs/configuration.md)
delivers into a mail store that runs its own delivery agent -- Dovecot's
LMTP is the usual one -- instead of writing a Maildir.  It is a local
method in the configuration (the recipient was expanded, and must exist
in the action's userbase) but a client of another server by nature, so it
lives here, beside the SMTP/LMTP client it drives (`session.py`), and runs
in the mta process as the queue user: no delivery needs the recipient's
uid, and the LMTP server's socket is opened by the daemon's unprivileged
user, never by root.

What is sent, per envelope (`LmtpJob`, resolved by the daemon's
dispatcher):

* MAIL FROM the envelope's sender (`<>` for a bounce); RCPT TO the
  recipient's user name from the userbase, or with `rcpt-to` the recipient
  address after expansion -- as OpenSMTPD's mail.lmtp `-u` and `-r`; with
  DSN offered, ORCPT carries the address the client gave (so Dovecot's
  `lmtp_hdr_delivery_address = original` can use it), never NOTIFY: the
  queue answers for local deliveries.
* the message as queued, headers and all.  No `Return-Path:` or
  `Delivered-To:` is prepended, unlike a Maildir: the LMTP server is the
  final delivery agent and writes its own (Dovecot adds both, and a
  `Received:`), so a message never carries two of each.

Envelopes of one message handed over in the same turn of the event loop go
in one transaction (a RCPT each, at most `max_rcpt`, never the same RCPT
twice); the server answers each recipient after the dot, and each answer
decides its envelope alone: 2xx delivered, 4xx `TempFail` (retried), 5xx
`PermFail` (bounced).  A destination that cannot be reached fails every
envelope waiting for it temporarily.

Sessions are reused: after a transaction the session serves the next
message for its destination, up to `session_mail_max`, and waits idle for
one for `idle_timeout`; at most `max_sessions` are open per destination.
A kept session the server closed meanwhile is replaced once by a fresh
one.  Every wait is bounded by the client's limits (connect 30 s, each
reply 300 s, the replies after the dot 600 s).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import BinaryIO, Final

from postillion.config.model import SECONDS
from postillion.errors import PermFail, Reply, TempFail
from postillion.mta._events import (
    ClientLimits,
    Outcome,
    Recipient,
    RecipientResult,
    Transaction,
    TransactionResult,
)
from postillion.mta.session import ClientConfig, ClientSession, RouteError, open_session
from postillion.queue.envelope import Envelope

logger = logging.getLogger("postillion.lmtp")


@dataclass(frozen=True, slots=True)
class LmtpSettings:
    """The bounds of LMTP delivery, one place for their defaults
    (docs/configuration.md, action lmtp)."""

    max_sessions: int = 4              # sessions open at once per destination
    max_rcpt: int = 100                # recipients in one transaction
    session_mail_max: int = 100        # transactions on one session before it is closed
    idle_timeout: float = 30 * SECONDS  # an idle session waits this long for the next message
    limits: ClientLimits = field(default_factory=ClientLimits)  # connect, replies, after the dot

    def __post_init__(self) -> None:
        for name in ("max_sessions", "max_rcpt", "session_mail_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if self.idle_timeout < 0:
            raise ValueError("idle_timeout must not be negative")


DEFAULT_SETTINGS: Final = LmtpSettings()


@dataclass(frozen=True, slots=True)
class LmtpJob:
    """One envelope's LMTP delivery: where, and the RCPT TO address.

    `destination` is the action's `HOST:PORT`, `[ADDRESS]:PORT` or
    `/path/to/socket`, format specifiers already expanded.
    """

    envelope: Envelope
    destination: str
    rcpt_to: str


def client_config(destination: str, helo: str, limits: ClientLimits) -> ClientConfig:
    """The client's config for an lmtp destination; ValueError if it is
    none (the parser has checked the configuration's, so only an expanded
    socket path can be wrong)."""
    if destination.startswith("/"):
        return ClientConfig(host="localhost", scheme="lmtp", socket_path=destination,
                            helo=helo, limits=limits)
    host, colon, port = destination.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ValueError(f"not HOST:PORT or /socket: {destination!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if host[:5].lower() == "ipv6:":
            host = host[5:]
    return ClientConfig(host=host, scheme="lmtp", port=int(port), helo=helo, limits=limits)


@dataclass(eq=False)
class _Job:
    job: LmtpJob
    message: BinaryIO
    done: asyncio.Future[None]


def _failure(reply: Reply, reason: str = "") -> TempFail | PermFail:
    kind = PermFail if reply.code >= 500 else TempFail
    if reply.code < 400:        # never a success passed off as a failure
        reply = Reply(451, "4.3.0", reply.text or "Delivery failed")
    return kind(reply, reason or str(reply))


def _settle(item: _Job, error: TempFail | PermFail | None) -> None:
    if item.done.done():
        return
    if error is None:
        item.done.set_result(None)
    else:
        item.done.set_exception(error)


class Destination:
    """One LMTP server: the envelopes waiting for it and its sessions."""

    def __init__(self, agent: LmtpAgent, name: str, config: ClientConfig) -> None:
        self.agent = agent
        self.name = name
        self.config = config
        self.pending: deque[_Job] = deque()
        self.idle: list[tuple[ClientSession, float]] = []
        self.workers: set[asyncio.Task[None]] = set()
        self.opened = 0             # sessions opened so far (tests and the log)
        self._kick_scheduled = False

    @property
    def settings(self) -> LmtpSettings:
        return self.agent.settings

    def submit(self, item: _Job) -> None:
        self.pending.append(item)
        if not self._kick_scheduled:
            # On the next turn: every envelope of a message handed over in
            # this one shares a transaction.
            self._kick_scheduled = True
            asyncio.get_running_loop().call_soon(self._kick)

    def _kick(self) -> None:
        self._kick_scheduled = False
        loop = asyncio.get_running_loop()
        while self.pending and len(self.workers) < self.settings.max_sessions:
            group = self._claim()
            if not group:
                break
            task = loop.create_task(self._work(group))
            self.workers.add(task)
            task.add_done_callback(self._worker_done)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        self.workers.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("lmtp %s: %r", self.name, task.exception())
        if self.pending and not self._kick_scheduled:
            self._kick_scheduled = True
            asyncio.get_running_loop().call_soon(self._kick)

    def _claim(self) -> list[_Job]:
        """The next message's envelopes for one transaction, oldest first."""
        while self.pending and self.pending[0].done.done():
            self.pending.popleft()          # its caller gave up (cancelled)
        if not self.pending:
            return []
        first = self.pending.popleft()
        group, rest = [first], deque[_Job]()
        addresses = {first.job.rcpt_to}
        envelope = first.job.envelope
        while self.pending:
            item = self.pending.popleft()
            other = item.job.envelope
            if (other.msgid == envelope.msgid and other.sender == envelope.sender
                    and item.job.rcpt_to not in addresses
                    and len(group) < self.settings.max_rcpt and not item.done.done()):
                group.append(item)
                addresses.add(item.job.rcpt_to)
            else:
                rest.append(item)
        self.pending = rest
        return group

    # -- sessions ---------------------------------------------------------------

    def _take_idle(self) -> ClientSession | None:
        while self.idle:
            session, _ = self.idle.pop()
            if session.usable:
                return session
            self.agent.close_later(session)
        return None

    def _park(self, session: ClientSession) -> None:
        if not session.usable or session.messages >= self.settings.session_mail_max \
                or self.agent.stopping:
            self.agent.close_later(session)
            return
        loop = asyncio.get_running_loop()
        self.idle.append((session, loop.time()))
        loop.call_later(self.settings.idle_timeout, self._expire)

    def _expire(self) -> None:
        now = asyncio.get_running_loop().time()
        keep = []
        for session, since in self.idle:
            if now - since >= self.settings.idle_timeout or not session.usable:
                self.agent.close_later(session)
            else:
                keep.append((session, since))
        self.idle = keep

    async def _work(self, group: list[_Job]) -> None:
        session = self._take_idle()
        reused = session is not None
        try:
            while group:
                if session is None:
                    try:
                        session = await open_session(self.config)
                    except RouteError as e:
                        # The server is down or refuses us: so for everyone waiting.
                        logger.info("lmtp %s: %s", self.name, e.reason)
                        self._fail([*group, *self._drain()], e)
                        group = []
                        return
                    self.opened += 1
                    reused = False
                result = await self._send(session, group)
                if reused and self._closed_under_us(session, result):
                    # A kept session the server had closed: once, on a fresh one.
                    self.agent.close_later(session)
                    session, reused = None, False
                    continue
                for item, outcome in zip(group, result.recipients):
                    _settle(item, self._outcome(outcome, result.error))
                group = []
                if not session.usable or session.messages >= self.settings.session_mail_max:
                    self.agent.close_later(session)
                    session = None
                    return
                group = self._claim()
                reused = True
        finally:
            for item in group:               # unanswered (cancelled): back to wait
                if not item.done.done():
                    self.pending.appendleft(item)
            if session is not None:
                self._park(session)

    def _drain(self) -> list[_Job]:
        items, self.pending = list(self.pending), deque()
        return items

    @staticmethod
    def _fail(items: Iterable[_Job], error: TempFail | PermFail) -> None:
        for item in items:
            _settle(item, error)

    @staticmethod
    def _closed_under_us(session: ClientSession, result: TransactionResult) -> bool:
        """Nothing delivered and the session is over: the server had closed
        (or was closing) it while it waited idle."""
        return not result.delivered and (bool(result.error) or not session.usable)

    async def _send(self, session: ClientSession, group: list[_Job]) -> TransactionResult:
        first = group[0].job.envelope
        transaction = Transaction(
            sender=first.sender,
            recipients=tuple(Recipient(item.job.rcpt_to,
                                       orcpt=item.job.envelope.dsn_orcpt or item.job.envelope.rcpt,
                                       evpid=item.job.envelope.id) for item in group),
            # A message that asked for SMTPUTF8 says so when the server
            # takes it; one that does not is handed the bytes as they are
            # (ASCII addresses): a mail store needs no downgrade.
            smtputf8="smtputf8" in first.flags and session.proto.extensions.smtputf8)
        message = group[0].message
        await asyncio.to_thread(message.seek, 0)
        return await session.send(transaction, message)

    @staticmethod
    def _outcome(outcome: RecipientResult, error: str) -> TempFail | PermFail | None:
        if outcome.outcome is Outcome.OK:
            return None
        reason = str(outcome.reply) if outcome.from_peer or not error else error
        return _failure(outcome.reply, reason)

    async def stop(self) -> None:
        for task in list(self.workers):
            task.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)
        self._fail(self._drain(), TempFail(Reply(451, "4.3.0", "LMTP delivery stopped"),
                                          "the daemon is stopping"))
        idle, self.idle = self.idle, []
        for session, _ in idle:
            self.agent.close_later(session)


class LmtpAgent:
    """`deliver(job, message)`: returns once the LMTP server took the message
    for the job's recipient, raises TempFail or PermFail otherwise.
    `message` is the queued message file, open for reading; it stays the
    caller's."""

    def __init__(self, hostname: str, settings: LmtpSettings = DEFAULT_SETTINGS) -> None:
        self.hostname = hostname
        self.settings = settings
        self.destinations: dict[str, Destination] = {}
        self.stopping = False
        self._closing: set[asyncio.Task[None]] = set()

    async def deliver(self, job: LmtpJob, message: BinaryIO) -> None:
        if self.stopping:
            raise TempFail(Reply(451, "4.3.0", "LMTP delivery stopped"), "the daemon is stopping")
        destination = self.destinations.get(job.destination)
        if destination is None:
            try:
                config = client_config(job.destination, self.hostname, self.settings.limits)
            except ValueError as e:
                raise TempFail(Reply(451, "4.3.0", "Bad LMTP destination"), str(e)) from None
            destination = self.destinations[job.destination] = Destination(self, job.destination, config)
        item = _Job(job, message, asyncio.get_running_loop().create_future())
        destination.submit(item)
        await item.done

    def close_later(self, session: ClientSession) -> None:
        """QUIT and close a session in the background (bounded by its quit timeout)."""
        task = asyncio.get_running_loop().create_task(session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def stop(self) -> None:
        """Fail what waits, close every session."""
        self.stopping = True
        for destination in list(self.destinations.values()):
            await destination.stop()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
