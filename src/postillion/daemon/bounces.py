"""Bounces: the scheduler's hooks that turn given-up and delayed envelopes
into delivery status notifications, queued like any local mail.

The DSN itself is written by `queue/bounce.py`; this module decides when,
groups the envelopes of one message and one sender into one DSN (those that
fail within `GROUP_DELAY` of each other, as OpenSMTPD waits a second), and
hands the message to `send` -- a local SMTP session in the one-process
daemon, an smtp process in the roles -- so the DSN goes through the rules
and expansion to the sender's address and is delivered by whichever agent
that address needs (a local sender's Maildir, or the MTA).

A DSN that could not be queued (`send` answered 4xx, or failed) keeps its
envelopes: the scheduler tries the bounce again later.  One the sender's
address refuses for good (5xx: the sender is not ours to reach and no rule
relays for it) cannot ever be sent; it is logged and the envelopes go.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from postillion import log, metrics
from postillion.errors import Reply, TempFail
from postillion.queue.bounce import Kind, build_dsn, due_warning, wants_dsn, warned
from postillion.queue.envelope import Envelope, format_msgid
from postillion.queue.store import QueueStore

logger = logging.getLogger("postillion.queue")

#: Seconds the envelopes of one message and sender are gathered into one DSN.
GROUP_DELAY: Final = 1.0

Send = Callable[[str, Sequence[str], bytes], Awaitable[Reply]]
"""Queue a message: (sender, recipients, content) -> the reply to its end of
data (250: queued) or to what refused it."""


@dataclass
class _Group:
    envelopes: list[Envelope] = field(default_factory=list)
    done: asyncio.Future[None] | None = None


class Bouncer:
    """`failed(envelope)` is the scheduler's bounce hook; `delayed(envelope,
    next_attempt)` its warning hook."""

    def __init__(self, store: QueueStore, hostname: str, send: Send,
                 warn_intervals: Sequence[float] = (), *,
                 clock: Callable[[], float] = time.time, group_delay: float = GROUP_DELAY) -> None:
        self.store = store
        self.hostname = hostname
        self.send = send
        self.warn_intervals = tuple(warn_intervals)
        self.clock = clock
        self.group_delay = group_delay
        self._groups: dict[tuple[int, str, str], _Group] = {}

    async def failed(self, envelope: Envelope) -> None:
        """A permanent failure or an expiry: a `failed` DSN, unless the
        sender does not get one (null sender, NOTIFY without FAILURE)."""
        if not wants_dsn(envelope, "failed"):
            log.event(log.new_id(), "queue", "bounce", evpid=f"{envelope.id:016x}",
                      result="none", reason=_why_none(envelope))
            return
        await self._queue("failed", envelope)

    async def succeeded(self, envelope: Envelope) -> None:
        """After a delivery: a "delivered" DSN (local) or "relayed" (handed
        to the next hop) when the sender asked with NOTIFY=SUCCESS.  Queued
        at once, one per recipient (not gathered: the message may be
        removed with this envelope), before the envelope goes.  A failure
        is logged; the delivery stands.  (A "relayed" DSN goes even when the
        next hop took the NOTIFY parameter on: the agent does not report
        whether it offered DSN.)"""
        kind: Kind = "relayed" if envelope.type == "mta" else "delivered"
        if not wants_dsn(envelope, kind):
            return
        done = envelope.replace(esc_class=2, esc_code="2.0.0", errorline="")
        try:
            reply = await self._send(kind, [done])
        except Exception as e:
            logger.warning("queue bounce-failed evpid=%016x kind=%s reason=%s", envelope.id, kind, e)
            return
        log.event(log.new_id(), "queue", "bounce", msgid=format_msgid(envelope.msgid), kind=kind,
                  to=log.path(envelope.sender), nrcpt=1,
                  result="Ok" if reply.code == 250 else "TempFail" if reply.code < 500 else "PermFail",
                  stat=str(reply))

    async def delayed(self, envelope: Envelope, next_attempt: float) -> Envelope:
        """After a temporary failure: a `delayed` DSN when a warn-interval
        ends before the next attempt.  Returns the envelope to save (it
        remembers what was reported); unchanged when nothing was sent."""
        interval = due_warning(envelope, next_attempt, self.warn_intervals)
        if interval is None:
            return envelope
        try:
            await self._queue("delayed", envelope)
        except Exception as e:          # a warning is never worth a retry of its own
            logger.warning("queue bounce-failed evpid=%016x kind=delayed reason=%s", envelope.id, e)
            return envelope
        return warned(envelope, interval, self.clock())

    async def _queue(self, kind: Kind, envelope: Envelope) -> None:
        key = (envelope.msgid, envelope.sender, kind)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(done=asyncio.get_running_loop().create_future())
            asyncio.get_running_loop().call_later(
                self.group_delay, lambda: asyncio.ensure_future(self._flush(key)))
        group.envelopes.append(envelope)
        assert group.done is not None
        await asyncio.shield(group.done)

    async def _flush(self, key: tuple[int, str, str]) -> None:
        group = self._groups.pop(key)
        assert group.done is not None
        msgid, sender, kind = key
        try:
            reply = await self._send(kind, group.envelopes)  # type: ignore[arg-type]
        except Exception as e:
            logger.exception("queue bounce-failed msgid=%s", format_msgid(msgid))
            group.done.set_exception(TempFail(Reply(451, "4.3.0", "Bounce not queued"), str(e)))
            return
        fields = dict(msgid=format_msgid(msgid), kind=kind, to=log.path(sender),
                      nrcpt=len(group.envelopes))
        if reply.code == 250:
            log.event(log.new_id(), "queue", "bounce", **fields, result="Ok", stat=str(reply))
            group.done.set_result(None)
        elif reply.code >= 500:
            # The sender's address is refused for good: no DSN can ever reach it.
            log.event(log.new_id(), "queue", "bounce", **fields, result="PermFail", stat=str(reply))
            group.done.set_result(None)
        else:
            log.event(log.new_id(), "queue", "bounce", **fields, result="TempFail", stat=str(reply))
            group.done.set_exception(TempFail(reply, f"bounce not queued: {reply}"))
        # Nobody may be waiting (a cancelled hook): never warn of an unread result.
        if group.done.done() and not group.done.cancelled():
            group.done.exception()

    async def _send(self, kind: Kind, envelopes: list[Envelope]) -> Reply:
        path = self.store.message_path(envelopes[0].msgid)
        now = self.clock()

        def build() -> bytes:
            with open(path, "rb") as original:
                return build_dsn(kind, envelopes, original, hostname=self.hostname, now=now)

        data = await asyncio.to_thread(build)
        reply = await self.send("", (envelopes[0].sender,), data)
        if reply.code == 250:
            metrics.BOUNCES_QUEUED.inc()
        return reply


def _why_none(envelope: Envelope) -> str:
    if not envelope.sender:
        return "null-sender"
    if "NEVER" in envelope.dsn_notify:
        return "notify-never"
    return "notify"
