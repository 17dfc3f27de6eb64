"""The ctl verbs the queue process answers with the help of the others.

The queue process serves the control socket (control/server.py).  Its own
verbs are in control/queueverbs.py; these ones gather or spread: counters
summed over every process (`show stats`, `monitor`), what the mta process
knows (`show hosts|hoststats|relays|routes`, `resume route`), what every
smtp process does (`pause|resume smtp`), what every process does (`update
table`, `trace`, `untrace`, `log verbose|brief`), and what only the parent
does (`stop`, `reload`, its part of `show status`).  Each travels as a
Control frame over a channel the processes already share
(control/remote.py); the daemon package wires, so this module may see
every part.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from postillion import stats
from postillion.control import protocol as wire
from postillion.control.remote import ControlError, logging_verb
from postillion.control.server import Answer, Request, Verb
from postillion.daemon.relaying import MtaLink
from postillion.daemon.smtplinks import SmtpLinks
from postillion.queue.scheduler import Scheduler
from postillion.queue.store import QueueStore

#: `monitor` clients at once; one more is told to try later.
MAX_MONITORS: Final = 4
#: Seconds between two lines of `monitor`.
MONITOR_EVERY: Final = 1.0

#: `monitor`'s columns: (name, counter it is the per-second delta of).
MONITOR_DELTAS: Final = (
    ("enqueued", "queue.envelope.enqueued"), ("dequeued", "queue.envelope.dequeued"),
    ("delivered", "scheduler.delivery.ok"), ("tempfail", "scheduler.delivery.tempfail"),
    ("permfail", "scheduler.delivery.permfail"), ("loops", "scheduler.delivery.loop"),
    ("expired", "scheduler.envelope.expired"), ("removed", "scheduler.envelope.removed"),
    ("bounces", "queue.bounce"))

AskParent = Callable[[str, tuple[str, ...]], Awaitable[Any]]


class ControlVerbs:
    def __init__(self, store: QueueStore, scheduler: Callable[[], Scheduler | None],
                 smtp: SmtpLinks, mta: MtaLink | None, ask_parent: AskParent,
                 update_table: Callable[[str], Awaitable[bool]],
                 paused: frozenset[str] = frozenset()) -> None:
        self.store, self.scheduler = store, scheduler
        self.smtp, self.mta = smtp, mta
        self.ask_parent = ask_parent
        self.update_table = update_table
        self.started = time.time()
        #: Whether the smtp processes are paused: the parent started this
        #: process with "smtp" among `paused` if they are.
        self.smtp_paused = "smtp" in paused
        self._monitors = 0

    def verbs(self) -> dict[str, Verb]:
        verbs = {
            "show stats": self.show_stats, "show status": self.show_status,
            "pause smtp": self.pause_smtp, "resume smtp": self.resume_smtp,
            "pause mda": self.pause, "resume mda": self.resume,
            "pause mta": self.pause, "resume mta": self.resume,
            "update table": self.update, "monitor": self.monitor,
            "trace": self.logging, "untrace": self.logging,
            "log verbose": self.logging, "log brief": self.logging,
            "stop": self.parent_verb, "reload": self.parent_verb,
            "resume route": self.resume_route,
        }
        for verb in ("show hosts", "show hoststats", "show relays", "show routes"):
            verbs[verb] = self.mta_list
        return {name: Verb(handler) for name, handler in verbs.items()}

    # -- helpers --------------------------------------------------------------

    def _mta_channel(self) -> Any:
        if self.mta is None or self.mta.channel is None or self.mta.channel.closed.is_set():
            return None
        return self.mta.channel

    async def _everywhere(self, verb: str, args: tuple[str, ...] = (),
                          mta: bool = True) -> list[Any]:
        """`verb` in every smtp process (and the mta process): their answers,
        a ControlError for each that refused or went away."""
        results = await self.smtp.calls.ask_all(self.smtp.live(), verb, args)
        channel = self._mta_channel() if mta else None
        if channel is not None and self.mta is not None:
            results += await self.mta.calls.ask_all([channel], verb, args)
        return results

    def queue_size(self) -> int:
        return sum(len(self.store.evpids(m)) for m in self.store.msgids())

    async def totals(self) -> dict[str, int]:
        """Every process's counters, summed, with the queue's gauges."""
        total = stats.snapshot()
        for result in await self._everywhere("show stats"):
            if isinstance(result, dict):
                stats.add(total, result)
        scheduler = self.scheduler()
        total["queue.size"] = self.queue_size()
        total["scheduler.envelope"] = scheduler.size if scheduler is not None else 0
        total["scheduler.envelope.inflight"] = scheduler.inflight if scheduler is not None else 0
        total["scheduler.envelope.held"] = scheduler.held if scheduler is not None else 0
        total.setdefault("smtp.session", 0)
        return dict(sorted(total.items()))

    # -- the verbs ------------------------------------------------------------

    async def show_stats(self, request: Request, answer: Answer) -> dict[str, int]:
        if request.args:
            raise ControlError(wire.USAGE, "usage: show stats")
        return await self.totals()

    async def show_status(self, request: Request, answer: Answer) -> dict[str, Any]:
        scheduler = self.scheduler()
        paused = sorted(scheduler.paused) if scheduler is not None else []
        if self.smtp_paused:
            paused.append("smtp")
        parent = await self.ask_parent("show status", ())
        return {**parent, "paused": sorted(paused), "queue": self.queue_size(),
                "queue-started": int(self.started)}

    async def pause(self, request: Request, answer: Answer) -> dict[str, Any]:
        return await self._subsystem(request.verb.split()[1], True)

    async def resume(self, request: Request, answer: Answer) -> dict[str, Any]:
        return await self._subsystem(request.verb.split()[1], False)

    async def _subsystem(self, subsystem: str, paused: bool) -> dict[str, Any]:
        """`pause|resume mda|mta`: the scheduler stops or starts dispatching it."""
        scheduler = self.scheduler()
        if scheduler is None:
            raise ControlError(wire.TEMPFAIL, "the queue is starting; try again")
        was = subsystem in scheduler.paused
        (scheduler.pause if paused else scheduler.resume)(subsystem)
        await self._remember(subsystem, paused)
        return {"subsystem": subsystem, "paused": paused, "changed": was != paused}

    async def _remember(self, subsystem: str, paused: bool) -> None:
        """Tell the parent, which starts a restarted role (this one
        included) with what is paused."""
        await self.ask_parent("set paused", (subsystem, "yes" if paused else "no"))

    async def pause_smtp(self, request: Request, answer: Answer) -> dict[str, Any]:
        return await self._smtp_state(request.verb, True)

    async def resume_smtp(self, request: Request, answer: Answer) -> dict[str, Any]:
        return await self._smtp_state(request.verb, False)

    async def _smtp_state(self, verb: str, paused: bool) -> dict[str, Any]:
        changed = self.smtp_paused != paused
        self.smtp_paused = paused
        await self._remember("smtp", paused)       # a restarted smtp process is paused too
        results = await self._everywhere(verb, mta=False)
        failed = [r for r in results if isinstance(r, ControlError)]
        if failed:
            raise ControlError(wire.TEMPFAIL, f"{verb}: {failed[0].text}")
        return {"subsystem": "smtp", "paused": paused, "changed": changed,
                "processes": len(results)}

    async def update(self, request: Request, answer: Answer) -> dict[str, Any]:
        if len(request.args) != 1:
            raise ControlError(wire.USAGE, "usage: update table NAME")
        name = request.args[0]
        updated = []
        if await self.update_table(name):
            updated.append("queue")
        for i, result in enumerate(await self._everywhere("update table", (name,))):
            if isinstance(result, ControlError):
                raise ControlError(wire.TEMPFAIL, f"update table {name}: {result.text}")
            if result.get("updated"):
                updated.append("mta" if i >= len(self.smtp.live()) else "smtp")
        if not updated:
            raise ControlError(wire.NOT_FOUND, f"table {name}: no such table in use")
        return {"table": name, "processes": updated}

    async def logging(self, request: Request, answer: Answer) -> dict[str, Any]:
        result = logging_verb(request.verb, request.args)      # checks the arguments too
        results = await self._everywhere(request.verb, request.args)
        results.append(await self.ask_parent(request.verb, request.args))
        failed = [r for r in results if isinstance(r, ControlError)]
        if failed:
            raise ControlError(wire.TEMPFAIL, f"{request.verb}: {failed[0].text}")
        return {**result, "processes": len(results) + 1}

    async def parent_verb(self, request: Request, answer: Answer) -> Any:
        if request.args:
            raise ControlError(wire.USAGE, f"usage: {request.verb}")
        return await self.ask_parent(request.verb, request.args)

    async def mta_list(self, request: Request, answer: Answer) -> list[Any]:
        channel = self._mta_channel()
        if channel is None or self.mta is None:
            return []           # no mta process: nothing relayed, nothing to list
        result = await self.mta.calls.ask(channel, request.verb, request.args)
        return result if isinstance(result, list) else []

    async def resume_route(self, request: Request, answer: Answer) -> Any:
        channel = self._mta_channel()
        if channel is None or self.mta is None:
            raise ControlError(wire.NOT_FOUND, "no mta process: no routes")
        return await self.mta.calls.ask(channel, request.verb, request.args)

    async def monitor(self, request: Request, answer: Answer) -> None:
        """One line per second until the client goes: sessions now, and the
        per-second deltas of the counters."""
        if request.args:
            raise ControlError(wire.USAGE, "usage: monitor")
        if self._monitors >= MAX_MONITORS:
            raise ControlError(wire.TEMPFAIL, f"already {MAX_MONITORS} monitors; try later")
        self._monitors += 1
        try:
            before = await self.totals()
            while not await answer.gone(MONITOR_EVERY):
                now = await self.totals()
                opened = sum(now.get(k, 0) - before.get(k, 0) for k in
                             ("smtp.session.local", "smtp.session.inet4", "smtp.session.inet6"))
                line = {"clients": now.get("smtp.session", 0), "new": opened,
                        "closed": now.get("smtp.session.closed", 0) - before.get("smtp.session.closed", 0),
                        "queue": now.get("queue.size", 0)}
                for name, counter in MONITOR_DELTAS:
                    line[name] = now.get(counter, 0) - before.get(counter, 0)
                await answer.part(line)
                before = now
            return None
        finally:
            self._monitors -= 1
