"""Verbs carried out in another process: the Control / ControlDone frames.

The queue process serves the control socket; what only the parent, the
smtp processes or the mta process can do travels to them as a `Control`
frame over the channel they already share (channel.py), and comes back as
`ControlDone` with the same id.  `ControlCalls` is the asking side (one per
channel set), `answer` the answering side, given that process's handlers.

The logging verbs (`trace`, `untrace`, `log verbose|brief`) are the same in
every process, so they live here too.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from postillion import channel as ch
from postillion.control import protocol as wire
from postillion.control.server import ControlError

logger = logging.getLogger("postillion.control")

#: Longest one process takes to answer a passed-on verb.
ANSWER_TIMEOUT: Final = 10.0

#: `trace SUBSYSTEM`: the logger each subsystem's debug lines go to.
TRACE: Final[dict[str, str]] = {
    "smtp": "postillion.smtp",        # each SMTP event by name, paused refusals
    "mta": "postillion.mta",          # sessions to next hops, route errors
    "queue": "postillion.queue",      # commits, retries, schedule decisions
    "table": "postillion.table",      # each lookup (found or not), reloads
    "control": "postillion.control",  # every control request: who, what
    "mda": "postillion.mda",          # each delivery job: method, user
    "channel": "postillion.channel",  # each frame between the processes
}

#: A remote verb's handler: its arguments in, a JSON-able result out
#: (or ControlError).
RemoteHandler = Callable[[tuple[str, ...]], Awaitable[Any]]


async def answer(frame: ch.Control, handlers: Mapping[str, RemoteHandler]) -> ch.ControlDone:
    """Run one passed-on verb here and say how it went."""
    handler = handlers.get(frame.verb)
    if handler is None:
        return ch.ControlDone(frame.id, wire.USAGE, json.dumps(f"{frame.verb}: not handled here"))
    try:
        result = await handler(frame.args)
    except ControlError as e:
        return ch.ControlDone(frame.id, e.status, json.dumps(e.text))
    except Exception as e:
        logger.exception("control: %s failed", frame.verb)
        return ch.ControlDone(frame.id, wire.TEMPFAIL, json.dumps(f"{frame.verb} failed: {e}"))
    return ch.ControlDone(frame.id, "", json.dumps(result))


def result_of(done: ch.ControlDone) -> Any:
    """The result a ControlDone carries, or its refusal as ControlError."""
    try:
        result = json.loads(done.result)
    except ValueError:
        result = done.result
    if done.status:
        raise ControlError(done.status, str(result))
    return result


class ControlCalls:
    """The asking side over one or more channels: ids, and the answers
    awaited (fed by the channel's frame handler through `answered`)."""

    def __init__(self, timeout: float = ANSWER_TIMEOUT) -> None:
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[ch.ControlDone]] = {}

    def answered(self, frame: ch.ControlDone) -> None:
        future = self._waiting.get(frame.id)
        if future is not None and not future.done():
            future.set_result(frame)

    async def ask(self, channel: ch.Channel, verb: str, args: tuple[str, ...] = ()) -> Any:
        """The result of `verb` in the process at the other end; ControlError
        (tempfail) when it went away or did not answer in time."""
        rid = next(self._ids)
        future: asyncio.Future[ch.ControlDone] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        closed = asyncio.ensure_future(channel.closed.wait())
        try:
            channel.send(ch.Control(rid, verb, tuple(args)))
            async with asyncio.timeout(self.timeout):
                await asyncio.wait([future, closed], return_when=asyncio.FIRST_COMPLETED)
            if not future.done():
                raise ControlError(wire.TEMPFAIL, f"{verb}: {channel.name} closed")
            return result_of(future.result())
        except (ConnectionError, TimeoutError):
            raise ControlError(wire.TEMPFAIL, f"{verb}: no answer on the {channel.name}") from None
        finally:
            closed.cancel()
            self._waiting.pop(rid, None)

    async def ask_all(self, channels: list[ch.Channel], verb: str,
                      args: tuple[str, ...] = ()) -> list[Any]:
        """`verb` in every process at once: each result, or the ControlError
        that process answered (the caller decides what a refusal means)."""
        results = await asyncio.gather(*(self.ask(c, verb, args) for c in channels),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, ControlError):
                raise result
        return list(results)


# -- the logging verbs, in every process ---------------------------------------


def logging_verb(verb: str, args: tuple[str, ...]) -> dict[str, Any]:
    """`trace|untrace SUBSYSTEM` and `log verbose|brief` in this process."""
    root = logging.getLogger("postillion")
    if verb in ("log verbose", "log brief"):
        if args:
            raise ControlError(wire.USAGE, f"usage: {verb}")
        root.setLevel(logging.DEBUG if verb == "log verbose" else logging.INFO)
        return {"level": "verbose" if verb == "log verbose" else "brief"}
    if len(args) != 1 or args[0] not in TRACE:
        raise ControlError(wire.USAGE, f"usage: {verb} SUBSYSTEM, one of: " + ", ".join(TRACE))
    logging.getLogger(TRACE[args[0]]).setLevel(logging.DEBUG if verb == "trace" else logging.NOTSET)
    return {"subsystem": args[0], "traced": verb == "trace"}


def logging_handlers() -> dict[str, RemoteHandler]:
    async def run(verb: str, args: tuple[str, ...]) -> dict[str, Any]:
        return logging_verb(verb, args)
    return {verb: (lambda args, v=verb: run(v, args))
            for verb in ("trace", "untrace", "log verbose", "log brief")}
