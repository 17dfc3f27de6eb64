"""Both ends of the channel between the queue process and the mta process.

The queue hands the mta process one envelope per `Relay` frame, with the
message as an open read-only descriptor (fds[0]: the mta process never
sees the spool), and gets one `Relayed` frame back: ok, tempfail or
permfail, with the reply that decided it.

`MtaLink` is the queue's end, the scheduler's `mta` agent.  The mta
process may die (a bug, kill -9) with relays in flight; the parent
restarts it and hands the queue a new channel (a `QueuePeer "mta"`
frame).  What the dead process had is then sent again to the new one at
once -- the next hop may get a message twice, never zero times -- rather
than failed as an attempt of the envelope's, which would put it off for a
remote retry (400 s) for a fault that is ours.  Each envelope is sent
again at most `LOST_RESENDS` times (a message that kills the mta process
every time must not keep killing it), and waits at most `LINK_WAIT` s for
an mta process to talk to; past either it fails temporarily and the
scheduler retries it later as any relay.

`run_one` is the mta process's end: one frame in, one `MtaAgent.relay` (or `LmtpAgent.deliver`),
one frame out.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO, Final

from postillion import channel as ch
from postillion import log
from postillion.control.remote import ControlCalls
from postillion.errors import MailError, PermFail, Reply, TempFail
from postillion.mta.lmtp import LmtpJob
from postillion.queue.envelope import Envelope

logger = logging.getLogger("postillion.queue")
mta_logger = logging.getLogger("postillion.mta")

#: Longest the queue waits for the mta process's answer about one envelope:
#: a connect (30 s), replies (300 s each) and the wait after the dot (600 s)
#: of a slow next hop, with room for a few of them.
RELAY_TIMEOUT: Final = 1800.0
#: Longest an envelope waits for an mta process to hand it to (one being
#: restarted: the parent's back-off reaches 60 s, then the start).
LINK_WAIT: Final = 90.0
#: Times one envelope is sent again after the mta process died holding it.
LOST_RESENDS: Final = 2

NOT_AVAILABLE: Final = Reply(451, "4.3.0", "Relaying is not available now")
NOT_ANSWERED: Final = Reply(451, "4.3.0", "Relay not answered")


class _Lost(Exception):
    """The channel a Relay went on closed before its answer came."""


class MtaLink:
    """The queue's end of the mta channel; `relay` is the scheduler's mta agent.

    `message_path(msgid)` names the message a Relay hands over (opened
    read-only here, closed once sent)."""

    def __init__(self, message_path: Callable[[int], Path], *,
                 link_wait: float = LINK_WAIT, relay_timeout: float = RELAY_TIMEOUT,
                 resends: int = LOST_RESENDS) -> None:
        self.message_path = message_path
        self.link_wait = link_wait
        self.relay_timeout = relay_timeout
        self.resends = resends
        self.channel: ch.Channel | None = None
        self._connected = asyncio.Event()
        self._ids = itertools.count(1)
        #: Relays awaiting their answer: id -> (the channel it went on, the answer).
        self._waiting: dict[int, tuple[ch.Channel, asyncio.Future[ch.Relayed]]] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        #: `postillion ctl` verbs passed on to the mta process.
        self.calls = ControlCalls()

    def connect(self, sock: socket.socket) -> None:
        """A channel to a (new) mta process: the old one's relays are lost."""
        old = self.channel
        self.channel = ch.Channel(sock, self._on_frame, "mta channel")
        self._connected.set()
        watcher = asyncio.get_running_loop().create_task(self._watch(self.channel))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        if old is not None:
            old.close()

    async def _watch(self, channel: ch.Channel) -> None:
        await channel.closed.wait()
        if channel is self.channel:
            self._connected.clear()
        for sent_on, future in list(self._waiting.values()):
            if sent_on is channel and not future.done():
                future.set_exception(_Lost(channel.error or "the mta process went away"))

    async def _on_frame(self, frame: ch.Frame) -> None:
        if isinstance(frame, ch.ControlDone):
            self.calls.answered(frame)
            return
        if not isinstance(frame, ch.Relayed):
            raise ch.ChannelError(f"unexpected {type(frame).__name__}")
        entry = self._waiting.get(frame.id)
        if entry is not None and not entry[1].done():
            entry[1].set_result(frame)

    async def relay(self, envelope: Envelope) -> None:
        """Relay one envelope through the mta process: returns once relayed,
        raises TempFail or PermFail as its answer says."""
        await self._hand(envelope, lambda rid, text, fd: ch.Relay(rid, text, fds=(fd,)))

    async def lmtp(self, job: LmtpJob) -> None:
        """The lmtp method: the mta process delivers over LMTP (mta/lmtp.py)."""
        await self._hand(job.envelope, lambda rid, text, fd: ch.Lmtp(
            rid, text, job.destination, job.rcpt_to, fds=(fd,)))

    async def _hand(self, envelope: Envelope, make: Callable[[int, str, int], ch.Frame]) -> None:
        """Send `make(id, envelope JSON, message fd)` to the mta process and
        apply its answer; resent to a restarted process when it was lost."""
        for sent in range(1 + self.resends):
            channel = await self._live()
            try:
                answer = await self._ask(channel, envelope, make)
            except _Lost as e:
                logger.warning("queue relay-lost evpid=%016x reason=%s%s", envelope.id,
                               log.escape(str(e)),
                               "; sending it again" if sent < self.resends else "")
                continue
            raise_outcome(answer)
            return
        raise TempFail(NOT_ANSWERED, f"the mta process went away {1 + self.resends} times "
                                     "while relaying it")

    async def _live(self) -> ch.Channel:
        try:
            async with asyncio.timeout(self.link_wait):
                while self.channel is None or self.channel.closed.is_set():
                    await self._connected.wait()
                    await asyncio.sleep(0)      # let a closing channel's watcher run
        except TimeoutError:
            raise TempFail(NOT_AVAILABLE, "no mta process") from None
        return self.channel

    async def _ask(self, channel: ch.Channel, envelope: Envelope,
                   make: Callable[[int, str, int], ch.Frame]) -> ch.Relayed:
        rid = next(self._ids)
        future: asyncio.Future[ch.Relayed] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = (channel, future)
        try:
            try:
                fd = os.open(self.message_path(envelope.msgid), os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise TempFail(Reply(451, "4.3.0", "Message unreadable"),
                               f"message: {e.strerror or e}") from None
            try:
                channel.send(make(rid, envelope.to_bytes().decode("utf-8", "surrogateescape"), fd))
            except ConnectionError as e:
                raise _Lost(str(e)) from None
            finally:
                os.close(fd)
            async with asyncio.timeout(self.relay_timeout):
                return await future
        except TimeoutError:
            raise TempFail(NOT_ANSWERED, "the mta process did not answer in "
                                         f"{self.relay_timeout:g}s") from None
        finally:
            self._waiting.pop(rid, None)

    def close(self) -> None:
        for _, future in self._waiting.values():
            if not future.done():
                future.set_exception(_Lost("the queue is stopping"))
        if self.channel is not None:
            self.channel.close()
        for watcher in list(self._watchers):
            watcher.cancel()


def raise_outcome(answer: ch.Relayed) -> None:
    """Apply an mta answer: return on ok, else raise what it says (a reply
    that does not fit its result is made a temporary failure)."""
    if answer.result == "ok":
        return
    try:
        reply = Reply(answer.code, answer.enhanced, answer.text)
    except ValueError:
        reply = Reply(451, "4.3.0", "Relay failed")
    if answer.result == "permfail" and reply.code >= 500:
        raise PermFail(reply, answer.reason)
    if reply.code < 400:
        reply = Reply(451, "4.3.0", reply.text)
    raise TempFail(reply, answer.reason)


async def run_one(frame: ch.Relay | ch.Lmtp,
                  deliver: Callable[[Envelope, BinaryIO], Awaitable[None]]) -> ch.Relayed:
    """The mta process's end: hand the envelope of one Relay or Lmtp frame
    to its agent (the message is fds[0]; the channel closes it after) and
    say how it ended."""
    try:
        envelope = Envelope.from_bytes(frame.envelope.encode("utf-8", "surrogateescape"))
    except ValueError as e:
        return ch.Relayed(frame.id, "tempfail", 451, "4.3.0", "Envelope unreadable", str(e))
    try:
        with os.fdopen(os.dup(frame.fds[0]), "rb") as message:
            await deliver(envelope, message)
    except MailError as e:
        result = "permfail" if isinstance(e, PermFail) else "tempfail"
        return ch.Relayed(frame.id, result, e.reply.code, e.reply.enhanced, e.reply.text, e.reason)
    except Exception as e:       # a bug costs this envelope a retry, not the process
        mta_logger.exception("mta: delivering %016x failed", envelope.id)
        return ch.Relayed(frame.id, "tempfail", 451, "4.3.0", "Internal error", repr(e))
    return ch.Relayed(frame.id, "ok", 250, "2.0.0", "Delivered", "")
