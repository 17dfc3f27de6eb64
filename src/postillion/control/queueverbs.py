"""The queue process's own control verbs: what is queued, and why; and
what an administrator does to envelopes (`schedule`, `remove`, `pause|resume
envelope`: root only).

Envelopes are described as the queue stores them (the JSON field names of
the envelope file), plus their run state from the scheduler; `ctl` turns
them into smtpctl's `show queue` lines.  A user who is not root sees only
the mail it enqueued itself (`sendmail`: `username` is its login name and
the mail came from the local socket) and is told "not found" for any other,
so a listing reveals nothing about other users' correspondents.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Final

from postillion.control import protocol as wire
from postillion.control.server import Answer, ControlError, Peer, Request, Verb
from postillion.errors import MailError
from postillion.queue.envelope import Envelope, EnvelopeCorrupt, format_evpid, format_msgid
from postillion.queue.scheduler import Scheduler
from postillion.queue.store import QueueStore

#: Messages per partial answer of `show queue` (the client's progress bar
#: moves once per piece).
LIST_PIECE: Final = 200
#: Octets of message text per partial answer of `show message`.
MESSAGE_PIECE: Final = 256 * 1024


def stored_fields(env: Envelope) -> dict[str, Any]:
    """The envelope exactly as its file holds it (field names with dashes)."""
    fields = json.loads(env.to_bytes().split(b"\n", 1)[0])
    assert isinstance(fields, dict)
    return fields


def family(sockaddr: str) -> str:
    if sockaddr == "local":
        return "local"
    return "inet6" if ":" in sockaddr else "inet4"


def parse_id(text: str) -> tuple[int | None, int | None]:
    """(msgid, None) for 8 hex digits, (None, evpid) for 16; ControlError else."""
    try:
        value = int(text, 16)
    except ValueError:
        value = -1
    if len(text) == 8 and value >= 0:
        return value, None
    if len(text) == 16 and value >= 0:
        return None, value
    raise ControlError(wire.USAGE, f"{text!r} is neither a msgid (8 hex digits) nor an evpid (16)")


class QueueVerbs:
    """`show queue|envelope|message` over the store and the scheduler.

    `scheduler` is a callable because the queue process builds the
    scheduler after the control socket's verbs are known."""

    def __init__(self, store: QueueStore, scheduler: Callable[[], Scheduler | None]) -> None:
        self.store = store
        self.scheduler = scheduler

    def verbs(self) -> dict[str, Verb]:
        return {
            "show queue": Verb(self.show_queue, anyone=True),
            "show envelope": Verb(self.show_envelope, anyone=True),
            "show message": Verb(self.show_message, anyone=True),
            "schedule": Verb(self.schedule),
            "remove": Verb(self.remove),
            "pause envelope": Verb(self.pause_envelope),
            "resume envelope": Verb(self.resume_envelope),
        }

    # -- helpers --------------------------------------------------------------

    @staticmethod
    def owns(peer: Peer, env: Envelope) -> bool:
        return peer.admin or (env.sockaddr == "local" and env.username == peer.name)

    async def envelope(self, evpid: int) -> Envelope | None:
        """The freshest copy: the scheduler's when it holds the envelope,
        else the file's.  None when it is not queued (or unreadable)."""
        try:
            return await self.store.load(evpid)
        except (KeyError, EnvelopeCorrupt, OSError):
            return None

    def describe(self, env: Envelope) -> dict[str, Any]:
        scheduler = self.scheduler()
        state, secs = scheduler.runstate(env.id) if scheduler is not None else ("offline", 0.0)
        return {
            "evpid": format_evpid(env.id), "msgid": format_msgid(env.msgid),
            "family": family(env.sockaddr), "type": env.type, "flags": sorted(env.flags),
            "sender": env.sender, "rcpt": env.rcpt, "dest": env.dest,
            "ctime": int(env.ctime), "expire": int(env.expires), "lasttry": int(env.last_try),
            "retries": env.retry, "runstate": state, "runstate-secs": int(secs),
            "error": env.errorline, "dispatcher": env.dispatcher, "username": env.username,
        }

    async def _mine(self, peer: Peer, text: str) -> list[Envelope]:
        """The envelopes `text` (a msgid or an evpid) names that `peer` may see."""
        msgid, evpid = parse_id(text)
        evpids = self.store.evpids(msgid) if msgid is not None else \
            [evpid] if evpid is not None and evpid in self.store.evpids(evpid >> 32) else []
        found = [env for e in evpids if (env := await self.envelope(e)) is not None]
        mine = [env for env in found if self.owns(peer, env)]
        if not mine:
            raise ControlError(wire.NOT_FOUND, f"{text}: no such envelope or message in the queue")
        return mine

    # -- verbs ------------------------------------------------------------------

    async def show_queue(self, request: Request, answer: Answer) -> dict[str, Any]:
        """Every envelope (one message's with an id argument), in pieces."""
        if len(request.args) > 1:
            raise ControlError(wire.USAGE, "usage: show queue [msgid]")
        if request.args:
            envs = await self._mine(request.peer, request.args[0])
            return {"total": 1, "done": 1, "envelopes": [self.describe(e) for e in envs]}
        msgids = self.store.msgids()
        piece: list[dict[str, Any]] = []
        done = 0
        for done, msgid in enumerate(msgids, 1):
            for evpid in self.store.evpids(msgid):
                env = await self.envelope(evpid)
                if env is not None and self.owns(request.peer, env):
                    piece.append(self.describe(env))
            if done % LIST_PIECE == 0:
                await answer.part({"total": len(msgids), "done": done, "envelopes": piece})
                piece = []
        return {"total": len(msgids), "done": len(msgids), "envelopes": piece}

    async def show_envelope(self, request: Request, answer: Answer) -> dict[str, Any]:
        if len(request.args) != 1:
            raise ControlError(wire.USAGE, "usage: show envelope evpid")
        _, evpid = parse_id(request.args[0])
        if evpid is None:
            raise ControlError(wire.USAGE, "show envelope takes an evpid (16 hex digits)")
        (env,) = await self._mine(request.peer, request.args[0])
        fields = stored_fields(env)
        state = self.describe(env)
        fields["runstate"], fields["runstate-secs"] = state["runstate"], state["runstate-secs"]
        return fields

    async def show_message(self, request: Request, answer: Answer) -> dict[str, Any]:
        """The message file as queued, in pieces of text (undecodable octets
        travel as surrogate escapes and come out as they went in)."""
        if len(request.args) != 1:
            raise ControlError(wire.USAGE, "usage: show message msgid|evpid")
        env = (await self._mine(request.peer, request.args[0]))[0]
        try:
            with open(self.store.message_path(env.msgid), "rb") as f:
                while chunk := await asyncio.to_thread(f.read, MESSAGE_PIECE):
                    await answer.part({"data": chunk.decode("utf-8", "surrogateescape")})
        except OSError as e:
            raise ControlError(wire.TEMPFAIL, f"message {format_msgid(env.msgid)}: {e.strerror or e}") from None
        return {"data": ""}

    # -- acting on envelopes (root only) -------------------------------------

    def _targets(self, verb: str, args: tuple[str, ...]) -> list[int]:
        """The evpids `msgid|evpid|all` names; not-found when none is queued."""
        if len(args) != 1:
            raise ControlError(wire.USAGE, f"usage: {verb} msgid|evpid|all")
        if args[0] == "all":
            return [e for m in self.store.msgids() for e in self.store.evpids(m)]
        msgid, evpid = parse_id(args[0])
        found = self.store.evpids(msgid) if msgid is not None else \
            [evpid] if evpid is not None and evpid in self.store.evpids(evpid >> 32) else []
        if not found:
            raise ControlError(wire.NOT_FOUND, f"{args[0]}: no such envelope or message in the queue")
        return found

    def _scheduler(self) -> Scheduler:
        scheduler = self.scheduler()
        if scheduler is None:
            raise ControlError(wire.TEMPFAIL, "the queue is starting; try again")
        return scheduler

    async def schedule(self, request: Request, answer: Answer) -> dict[str, Any]:
        """Due now: the backoff wait ends, the retry count stays."""
        scheduler = self._scheduler()
        evpids = self._targets("schedule", request.args)
        done = [format_evpid(e) for e in evpids if scheduler.make_due(e)]
        return {"scheduled": len(done), "evpids": done}

    async def remove(self, request: Request, answer: Answer) -> dict[str, Any]:
        """Gone without a bounce; one in flight goes once its attempt ends
        (unless that attempt delivered it)."""
        scheduler = self._scheduler()
        removed, later = [], []
        for evpid in self._targets("remove", request.args):
            env = await self.envelope(evpid)
            if env is None:
                continue
            try:
                outcome = await scheduler.remove(env)
            except MailError as e:
                raise ControlError(wire.TEMPFAIL, f"remove {format_evpid(evpid)}: {e.reason}") from None
            (removed if outcome == "removed" else later).append(format_evpid(evpid))
        return {"removed": len(removed), "inflight": len(later), "evpids": removed + later}

    async def pause_envelope(self, request: Request, answer: Answer) -> dict[str, Any]:
        """Held: not tried until resumed (in memory: a restart of the queue
        process schedules it again)."""
        scheduler = self._scheduler()
        held = [format_evpid(e) for e in self._targets("pause envelope", request.args)
                if scheduler.hold(e) is not None]
        return {"paused": len(held), "evpids": held}

    async def resume_envelope(self, request: Request, answer: Answer) -> dict[str, Any]:
        scheduler = self._scheduler()
        if request.args == ("all",):
            evpids = scheduler.held_ids()
        else:
            evpids = self._targets("resume envelope", request.args)
        resumed = [format_evpid(e) for e in evpids if scheduler.release(e)]
        return {"resumed": len(resumed), "evpids": resumed}
