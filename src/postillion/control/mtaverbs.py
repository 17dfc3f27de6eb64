"""The ctl verbs the mta process carries out, passed on by the queue process
(control/remote.py): `show hosts|hoststats|relays|routes`, `resume route`,
its counters, `update table` and the logging verbs.

Routes get a number the first time they are listed (`resume route N`
takes it), as smtpd's route ids; it lasts as long as the mta process.
`show hoststats` counts relays per recipient domain since the process
started, for at most HOSTSTATS_MAX domains (the oldest is forgotten).
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from postillion import stats
from postillion.control import protocol as wire
from postillion.control.remote import RemoteHandler, logging_handlers
from postillion.control.server import ControlError
from postillion.mta.agent import MtaAgent
from postillion.mta.routes import Route

#: Domains `show hoststats` remembers.
HOSTSTATS_MAX: Final = 1000


class HostStats:
    """Relays per recipient domain: ok, tempfail, permfail, last outcome."""

    def __init__(self, limit: int = HOSTSTATS_MAX) -> None:
        self.limit = limit
        self.domains: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()

    def note(self, domain: str, result: str) -> None:
        entry = self.domains.pop(domain, None) or {"ok": 0, "tempfail": 0, "permfail": 0}
        entry[result] = entry.get(result, 0) + 1
        entry["last"] = int(time.time())
        self.domains[domain] = entry
        while len(self.domains) > self.limit:
            self.domains.popitem(last=False)


class MtaVerbs:
    def __init__(self, agent: MtaAgent, hoststats: HostStats,
                 update_table: Callable[[str], Awaitable[bool]]) -> None:
        self.agent = agent
        self.hoststats = hoststats
        self.update_table = update_table
        self._ids = itertools.count(1)
        self._route_ids: dict[Route, int] = {}

    def handlers(self) -> dict[str, RemoteHandler]:
        return {"show stats": self.show_stats, "show hosts": self.show_hosts,
                "show hoststats": self.show_hoststats, "show relays": self.show_relays,
                "show routes": self.show_routes, "resume route": self.resume_route,
                "update table": self.update, **logging_handlers()}

    def _route_id(self, route: Route) -> int:
        rid = self._route_ids.get(route)
        if rid is None:
            rid = self._route_ids[route] = next(self._ids)
        return rid

    async def show_stats(self, args: tuple[str, ...]) -> dict[str, int]:
        snapshot = stats.snapshot()
        snapshot["mta.relay.connectors"] = len(self.agent.connectors)
        snapshot["mta.route"] = len(self.agent.state.routes)
        snapshot["mta.host"] = len(self.agent.state.hosts)
        snapshot["mta.session"] = sum(r.nconn for r in self.agent.state.routes.values())
        return snapshot

    async def show_hosts(self, args: tuple[str, ...]) -> list[dict[str, Any]]:
        now = self.agent.clock()
        return [{"host": host, "sessions": use.nconn,
                 "idle": int(max(0.0, now - use.idle_since())) if use.nconn == 0 else 0}
                for host, use in sorted(self.agent.state.hosts.items())]

    async def show_hoststats(self, args: tuple[str, ...]) -> list[dict[str, Any]]:
        return [{"domain": domain, **entry} for domain, entry in sorted(self.hoststats.domains.items())]

    async def show_relays(self, args: tuple[str, ...]) -> list[dict[str, Any]]:
        return [{"relay": str(relay), "pending": len(c.pending), "sessions": len(c.sessions),
                 "hosts": [str(h) for h in c.routes.hosts]}
                for relay, c in sorted(self.agent.connectors.items(), key=lambda kv: str(kv[0]))]

    async def show_routes(self, args: tuple[str, ...]) -> list[dict[str, Any]]:
        state = self.agent.state
        now = state.clock()
        known = set(state.routes)
        for route in [r for r in self._route_ids if r not in known]:
            del self._route_ids[route]          # forgotten by the mta: so is its id
        out = []
        for route, rstate in sorted(state.routes.items(), key=lambda kv: self._route_id(kv[0])):
            rstate.refresh(now)
            disabled = rstate.disabled_until is not None
            flags = ("D" if disabled else "") + ("" if rstate.proven else "N")
            out.append({"id": self._route_id(route), "route": str(route),
                        "source": str(route.source), "host": route.host.address,
                        "flags": flags, "penalty": rstate.penalty, "sessions": rstate.nconn,
                        "delay": int(max(0.0, rstate.disabled_until - now)) if disabled else 0,
                        "error": rstate.last_error})
        return out

    async def resume_route(self, args: tuple[str, ...]) -> dict[str, Any]:
        if len(args) != 1 or not args[0].isdigit():
            raise ControlError(wire.USAGE, "usage: resume route ID (a number from show routes)")
        wanted = int(args[0])
        state = self.agent.state
        for route, rid in self._route_ids.items():
            rstate = state.routes.get(route)
            if rid == wanted and rstate is not None:
                if rstate.disabled_until is None:
                    return {"route": wanted, "resumed": False}
                rstate.disabled_until = state.clock()     # re-enabled as its time were up
                rstate.refresh(state.clock())
                for connector in self.agent.connectors.values():
                    connector.wake.set()
                return {"route": wanted, "resumed": True}
        raise ControlError(wire.NOT_FOUND, f"route {wanted}: no such route (see show routes)")

    async def update(self, args: tuple[str, ...]) -> dict[str, Any]:
        return {"updated": await self.update_table(args[0])}


def mta_handlers(agent: MtaAgent, hoststats: HostStats,
                 update_table: Callable[[str], Awaitable[bool]]) -> dict[str, RemoteHandler]:
    return MtaVerbs(agent, hoststats, update_table).handlers()
