"""The queue's ends of its channels to the smtp processes.

Each smtp process tells the queue which envelopes it committed
(`Committed`, handed to `on_committed`); the queue asks one of them, in
turn, to queue a message through a local session (`Inject`: a bounce,
smtp/inject.py, the message in a memfd) and gets the reply to its end of
data (`Injected`: 250 = queued).

An smtp process may die with an Inject in hand; the parent restarts it
and hands the queue a channel to the new one (`QueuePeer "smtp"`).  The
Inject then goes to another smtp process at once -- one still running, or
the new one when it comes -- rather than waiting out `ANSWER_TIMEOUT`: the
message may be queued twice (the dead process may have committed it just
before), never lost.  At most `INJECT_TRIES` processes are asked, and a
message waits at most `LINK_WAIT` s for one; past either, `send` answers
`451 4.3.0` and the bounce is tried again later (daemon/bounces.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from postillion import channel as ch
from postillion import log
from postillion.control.remote import ControlCalls
from postillion.daemon.relaying import LINK_WAIT
from postillion.errors import Reply
from postillion.smtp.inject import INJECT_TIMEOUT

logger = logging.getLogger("postillion.queue")

#: Longest the queue waits for an smtp process to answer an Inject: its
#: local session ends within INJECT_TIMEOUT (120 s), plus reading the memfd.
ANSWER_TIMEOUT: Final = INJECT_TIMEOUT + 30.0
#: How many smtp processes one message is handed to when each dies first.
INJECT_TRIES: Final = 3

NO_SMTP: Final = Reply(451, "4.3.0", "No smtp process to queue the message")
LOST: Final = Reply(451, "4.3.0", "Not queued: the smtp process went away")


class SmtpLinks:
    """The channels to the smtp processes; `send` is the Bouncer's."""

    def __init__(self, on_committed: Callable[[ch.Committed], Awaitable[None]], *,
                 link_wait: float = LINK_WAIT, answer_timeout: float = ANSWER_TIMEOUT,
                 tries: int = INJECT_TRIES) -> None:
        self.on_committed = on_committed
        self.link_wait = link_wait
        self.answer_timeout = answer_timeout
        self.tries = tries
        self.channels: list[ch.Channel] = []
        self._draining: set[ch.Channel] = set()
        self._added = asyncio.Event()
        self._turn = itertools.count()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[ch.Injected]] = {}
        #: `postillion ctl` verbs passed on to the smtp processes.
        self.calls = ControlCalls()

    def listen(self, sock: socket.socket, inject: bool = True) -> None:
        """A channel to an smtp process (at start, or a restarted one).
        `inject` False: a process draining after a reload, whose commits
        are taken but which is handed no Inject (its rules are the old ones)."""
        channel = ch.Channel(sock, self._on_frame, "smtp channel")
        self.channels = [*self.live(), channel]
        self._draining = {c for c in self._draining if not c.closed.is_set()}
        if not inject:
            self._draining.add(channel)
        self._added.set()

    def live(self) -> list[ch.Channel]:
        return [c for c in self.channels if not c.closed.is_set()]

    def injectable(self) -> list[ch.Channel]:
        return [c for c in self.live() if c not in self._draining]

    async def _on_frame(self, frame: ch.Frame) -> None:
        if isinstance(frame, ch.Injected):
            future = self._waiting.get(frame.id)
            if future is not None and not future.done():
                future.set_result(frame)
        elif isinstance(frame, ch.Committed):
            await self.on_committed(frame)
        elif isinstance(frame, ch.ControlDone):
            self.calls.answered(frame)
        else:
            raise ch.ChannelError(f"unexpected {type(frame).__name__}")

    async def send(self, sender: str, rcpts: Sequence[str], message: bytes, *,
                   user: str = "", uid: int = -1) -> Reply:
        """Queue `message` through an smtp process (its rules, its commit):
        the reply to its end of data, or a 451 when none could take it.
        `user` and `uid` name the local user of a `sendmail` submission
        (control/enqueue.py); a bounce has none."""
        reply = NO_SMTP
        for tried in range(1, self.tries + 1):
            try:
                channel = await self._next()
            except TimeoutError:
                return reply
            answer = await self._ask(channel, sender, rcpts, message, user, uid)
            if answer is not None:
                return answer
            logger.warning("queue inject-lost to=%s reason=%s%s",
                           log.escape(",".join(log.path(r) for r in rcpts)),
                           log.escape(channel.error or "the smtp process went away"),
                           "; asking another one" if tried < self.tries else "")
            reply = LOST
        return reply

    async def _next(self) -> ch.Channel:
        async with asyncio.timeout(self.link_wait):
            while not (live := self.injectable()):
                self._added.clear()
                await self._added.wait()
        return live[next(self._turn) % len(live)]

    async def _ask(self, channel: ch.Channel, sender: str, rcpts: Sequence[str],
                   message: bytes, user: str = "", uid: int = -1) -> Reply | None:
        """The smtp process's reply, or None when it went away first."""
        rid = next(self._ids)
        future: asyncio.Future[ch.Injected] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        closed = asyncio.ensure_future(channel.closed.wait())
        try:
            fd = os.memfd_create("postillion-inject", 0)
            try:
                view = memoryview(message)
                while view:
                    view = view[os.write(fd, view):]
                channel.send(ch.Inject(rid, sender, tuple(rcpts), user, uid, fds=(fd,)))
            finally:
                os.close(fd)
            async with asyncio.timeout(self.answer_timeout):
                await asyncio.wait([future, closed], return_when=asyncio.FIRST_COMPLETED)
            if not future.done():
                return None
            answer = future.result()
            return Reply(answer.code, answer.enhanced, answer.text)
        except ConnectionError:
            return None
        except TimeoutError:
            return Reply(451, "4.3.0", "Not queued: the smtp process did not answer")
        except ValueError as e:         # a frame too long, a reply that is none
            return Reply(451, "4.3.0", f"Not queued: {e}")
        finally:
            closed.cancel()
            self._waiting.pop(rid, None)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
