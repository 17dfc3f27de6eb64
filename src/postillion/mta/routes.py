"""The MTA's route model: relays, hosts, sources, routes, and which route the next session takes.

OpenSMTPD's vocabulary (docs/architecture.md, The MTA: relays, hosts, routes):

- a **relay** is where a set of envelopes goes and how: the destination
  domain (or a smarthost), the TLS mode, port, AUTH label, source table,
  HELO, pki/ca and backup name.  Envelopes with equal relays share sessions
  (the value and its building from an action are in mta/relay.py).
- a **host** is one remote IP address, found under an MX name with its
  preference; a **source** is one of our addresses (or none: the kernel
  chooses); a **route** is a (source, host) pair.  A session runs on one
  route and reports its errors on that route only.

`RouteTable` holds one relay's hosts and sources and answers "which route
should the next session use now?" within the `mta limit` settings; `MtaState`
holds what every relay shares (sessions per host, source and domain, and each
route's health), so a dead host found by one relay is skipped by all.  The
module does no I/O and reads time only from the clock it is given, so tests
move time by hand.  DNS, table fetches and the SMTP client are the caller's.
"""

from __future__ import annotations

import enum
import ipaddress
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from postillion.errors import LookupUnavailable, Reply, TempFail
from postillion.mta.limits import MtaLimits
from postillion.mta.relay import Relay, relay_for

__all__ = [
    "ErrorKind", "Host", "MtaState", "Relay", "Route", "RouteHealth", "RouteTable", "Source",
    "Wait", "helo_name", "relay_for",
]

Clock = Callable[[], float]
#: One MX as the DNS helper hands it over: (preference, name, addresses).
Mx = tuple[int, str, Sequence[str]]

NEVER: Final = float("-inf")
#: At most this many addresses per relay (after max-mx-tried): a DNS answer
#: cannot make one relay's table, or a loop over it, grow without bound.
MAX_HOSTS: Final = 100
#: At most this many source addresses per relay (a `src` table's entries).
MAX_SOURCES: Final = 256
#: Shared entries idle (no session, not disabled) this long are forgotten,
#: penalty included: a route unused for an hour starts afresh.
FORGET_AFTER: Final = 3600.0
PRUNE_EVERY: Final = 60.0
#: While a limit holds, ask again after this many seconds at most (OpenSMTPD's
#: DELAY_CHECK_LIMIT): another relay's session may have freed a shared slot.
LIMIT_RECHECK: Final = 5.0

#: The temporary failures of a relay with no usable route (docs/architecture.md).
#: 4.4.1 is what an administrator sees for refused or unanswered connects
#: (RFC 3463 "No answer from host"); 4.4.0 (other routing status) for the
#: rest: routes refused at the greeting, no address of an allowed family, no
#: MX better than ours when backup.
NETWORK_ERROR: Final = Reply(451, "4.4.1", "Network error on destination MXs")
NO_VALID_ROUTE: Final = Reply(451, "4.4.0", "No valid route to remote MX")


class ErrorKind(enum.Enum):
    """What went wrong on a route, as the session reports it."""

    NETWORK = "network"   # refused or timed-out connect, required TLS failed
    SMTP = "smtp"         # 4xx/5xx greeting or EHLO


# ---------------------------------------------------------------- values


def _normal_address(text: str) -> str:
    return str(ipaddress.ip_address(text.strip("[]").removeprefix("IPv6:")))


@dataclass(frozen=True, slots=True)
class Host:
    """One remote address, with the MX preference and name it was found under.

    Equal hosts are equal addresses: the name and preference ride along for
    the log and the route choice, not the identity.
    """

    address: str
    preference: int = field(default=0, compare=False)
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", _normal_address(self.address))
        if not 0 <= self.preference <= 65535:
            raise ValueError(f"MX preference out of range: {self.preference}")

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4

    def __str__(self) -> str:
        return f"{self.address} ({self.name})" if self.name else self.address


@dataclass(frozen=True, slots=True)
class Source:
    """One of our addresses a session binds to; None lets the kernel choose."""

    address: str | None = None

    def __post_init__(self) -> None:
        if self.address is not None:
            object.__setattr__(self, "address", _normal_address(self.address))

    @property
    def family(self) -> int | None:
        if self.address is None:
            return None
        return 6 if ":" in self.address else 4

    def __str__(self) -> str:
        return self.address or "-"


@dataclass(frozen=True, slots=True)
class Route:
    """A (source, host) pair: what one session runs on and reports errors against."""

    source: Source
    host: Host

    def __str__(self) -> str:
        return f"{self.source} -> {self.host}"


@dataclass(frozen=True, slots=True)
class Wait:
    """No route for a new session now: why, and when to ask again.

    `until` is the clock time at which to ask again: when a delay ends or a
    disabled route comes back, and at most LIMIT_RECHECK seconds away while a
    limit holds (a session closing, on this relay or another sharing the
    host, source or domain, may free it sooner: ask again then too).  None
    only with `error` and nothing to wait for.  `error` is set when the
    relay has no usable route at all (every route disabled, or none
    exists): the caller fails the relay's waiting envelopes with it
    (temporarily: the queue retries them) rather than holding them.
    """

    reason: str
    until: float | None = None
    error: TempFail | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class RouteHealth:
    """What the model knows of one route, for `show routes` and tests."""

    sessions: int
    proven: bool
    penalty: int
    errors: int
    disabled_until: float | None
    last_error: str


def helo_name(source: Source, relay: Relay, hostname: str,
              helo_src: Mapping[str, str] | None = None) -> str:
    """The name a session on `source` gives in EHLO/HELO.

    The relay's `helo-src` table value for the source address wins (the
    caller fetched it: `helo_src` maps addresses to names), so each source
    address can announce the name its PTR record gives; then the relay's
    `helo NAME`; then our hostname.  Raises LookupUnavailable (451 4.3.0)
    for a table value that is not a host name: it would go on the wire.
    """
    name = None
    if relay.helo_src and source.address and helo_src:
        name = helo_src.get(source.address)
        if name is not None and not _is_helo(name):
            raise LookupUnavailable(f"helo-src table {relay.helo_src!r}: {name!r} "
                                    f"for {source.address} is not a host name")
    return name or relay.helo or hostname


def _is_helo(name: str) -> bool:
    return 0 < len(name) <= 255 and all(33 <= ord(c) <= 126 for c in name)


# ---------------------------------------------------------------- state


@dataclass(slots=True)
class _Use:
    """Sessions open on one scope, and when the last started and ended."""

    nconn: int = 0
    lastconn: float = NEVER
    lastdisc: float = NEVER

    def ready_at(self, limits: MtaLimits, scope: str) -> float:
        return max(self.lastconn + limits.conn_delay(scope),
                   self.lastdisc + limits.reconn_delay(scope))

    def idle_since(self) -> float:
        return max(self.lastconn, self.lastdisc)


_FREE: Final = _Use()


@dataclass(slots=True)
class _RouteState(_Use):
    """A route's health: proven (has worked), penalty, disabled until when."""

    proven: bool = False
    probing: int = 0              # sessions opened while unproven, not yet judged
    penalty: int = 0
    credit: bool = False          # penalty lowered by a re-enable, not yet earned
    errors: int = 0               # errors in a row on a proven route
    disabled_until: float | None = None
    disabled_kind: ErrorKind | None = None
    lastpenalty: float = NEVER
    last_error: str = ""

    def refresh(self, now: float) -> None:
        """Re-enable when the disable time is over: unproven again, penalty -1."""
        if self.disabled_until is not None and now >= self.disabled_until:
            self.disabled_until = None
            self.disabled_kind = None
            self.proven = False
            self.errors = 0
            self.credit = self.penalty > 0
            self.penalty = max(0, self.penalty - 1)

    def idle_since(self) -> float:
        return max(self.lastconn, self.lastdisc, self.lastpenalty)


class MtaState:
    """What every relay shares: sessions per host, source and domain, and route health.

    One per MTA process.  Entries appear when a session opens and are
    forgotten after FORGET_AFTER idle seconds, so memory follows the hosts
    in use, not every host ever seen.
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.hosts: dict[str, _Use] = {}
        self.sources: dict[Source, _Use] = {}
        self.domains: dict[tuple[str, bool], _Use] = {}
        self.routes: dict[Route, _RouteState] = {}
        self._next_prune = NEVER

    def route(self, route: Route, now: float) -> _RouteState:
        state = self.routes.get(route)
        if state is None:
            state = self.routes[route] = _RouteState()
        state.refresh(now)
        return state

    def peek_route(self, route: Route, now: float) -> _RouteState | None:
        state = self.routes.get(route)
        if state is not None:
            state.refresh(now)
        return state

    def prune(self, now: float, force: bool = False) -> None:
        """Forget idle entries (run at most every PRUNE_EVERY seconds unless forced)."""
        if not force and now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY
        horizon = now - FORGET_AFTER
        for table in (self.hosts, self.sources, self.domains):
            for key in [k for k, u in table.items() if u.nconn == 0 and u.idle_since() <= horizon]:
                del table[key]
        for route in [r for r, s in self.routes.items()
                      if s.nconn == 0 and s.disabled_until is None and s.idle_since() <= horizon]:
            del self.routes[route]


# ---------------------------------------------------------------- the table


@dataclass(slots=True)
class _Search:
    """What a search for a route found when it found none."""

    limit: str = ""                       # the first limit that held a candidate back
    until: float | None = None            # the earliest delay end or re-enable
    disabled: set[ErrorKind] = field(default_factory=set)
    mismatch: bool = False
    delayed: bool = False
    last_error: str = ""                  # the latest error of a disabled route, with its host
    last_error_at: float = NEVER

    def note(self, route: Route, state: _RouteState) -> None:
        """Keep the most recent error of the disabled routes seen."""
        if state.last_error and state.lastpenalty >= self.last_error_at:
            self.last_error_at = state.lastpenalty
            self.last_error = f"{route.host.address}: {state.last_error}"

    def later(self, when: float) -> None:
        self.until = when if self.until is None else min(self.until, when)


class RouteTable:
    """One relay's hosts and sources, and the choice of route for its next session.

    The caller feeds it the MX answer (`set_hosts`) and the source addresses
    (`set_sources`), asks `choose()` before opening a session, and reports
    `session_opened`, `route_ok` (the greeting and EHLO went through),
    `route_error` and `session_closed`.  The choice follows OpenSMTPD 6.8:
    the best MX preference level with a usable route; a route is skipped
    while disabled, while its host is at max-conn-per-host or in its connect
    delay, while it is unproven (never worked) and already in use, at
    max-conn-per-route or in its route delays; among the rest, the one with
    the fewest sessions (then the one connected least recently) wins.  When
    a level has routes only waiting for a limit or a delay, worse levels are
    not tried: mail waits for the better MX rather than spilling to a backup.
    With several sources, sessions cycle through them, so the receiver sees
    each of our addresses in turn.
    """

    def __init__(self, relay: Relay, limits: MtaLimits, state: MtaState,
                 mxs: Iterable[Mx] = (), sources: Sequence[str | None] = (None,),
                 backup_preference: int | None = None) -> None:
        self.relay = relay
        self.limits = limits
        self.state = state
        self._hosts: tuple[Host, ...] = ()
        self._sources: tuple[Source, ...] = (Source(),)
        self._cursor = 0
        self._relay = _Use()
        self._connectors: dict[Source, _Use] = {}
        self._open: Counter[Route] = Counter()
        self.set_hosts(mxs, backup_preference)
        self.set_sources(sources)

    # -- inputs

    def set_hosts(self, mxs: Iterable[Mx], backup_preference: int | None = None) -> None:
        """Take the relay's MX answer: (preference, name, addresses), any order.

        Kept: MXs strictly better than `backup_preference` (our own, when the
        relay is a backup), the first `max-mx-tried` names by preference,
        each address once (under its best MX), at most MAX_HOSTS addresses.
        Route health survives a refresh: a host that stays keeps its state.
        """
        ordered = sorted(mxs, key=lambda mx: mx[0])[:self.limits.max_mx_tried]
        hosts: list[Host] = []
        seen: set[str] = set()
        for preference, name, addresses in ordered:
            if backup_preference is not None and preference >= backup_preference:
                break
            for address in addresses:
                host = Host(address, preference, name.rstrip(".").lower())
                if host.address not in seen and len(hosts) < MAX_HOSTS:
                    seen.add(host.address)
                    hosts.append(host)
        self._hosts = tuple(hosts)

    def set_sources(self, addresses: Sequence[str | None]) -> None:
        """Take the relay's source addresses (its `src` table); None or empty = the kernel's."""
        sources = tuple(dict.fromkeys(Source(a) for a in addresses[:MAX_SOURCES]))
        self._sources = sources or (Source(),)
        self._cursor %= len(self._sources)

    @property
    def hosts(self) -> tuple[Host, ...]:
        return self._hosts

    @property
    def sources(self) -> tuple[Source, ...]:
        return self._sources

    @property
    def sessions(self) -> int:
        """Sessions open on this relay."""
        return self._relay.nconn

    def health(self, route: Route) -> RouteHealth:
        state = self.state.peek_route(route, self.state.clock()) or _RouteState()
        return RouteHealth(state.nconn, state.proven, state.penalty, state.errors,
                           state.disabled_until, state.last_error)

    # -- the choice

    def choose(self) -> Route | Wait:
        """The route the next session should use now, or why none and until when.

        Counts nothing: that is `session_opened`'s.  Returns a `Wait`
        with `error` when no route can ever be used as things stand (every
        candidate disabled, wrong address family, no host): a TempFail
        "Network error on destination MXs" (451 4.4.1) when routes were
        disabled for network errors, else "No valid route to remote MX"
        (451 4.4.0); when routes were disabled, the text ends with the
        latest of their errors and its host in parentheses, so the
        envelope's error line (and a bounce) says what happened.
        """
        now = self.state.clock()
        if not self._hosts:
            return self._no_route(_Search(), "no MX host to try")
        domain = self.state.domains.get(self._domain_key, _FREE)
        limit, ready = self._gates((("relay", self._relay), ("domain", domain)))
        if limit:
            return Wait(limit, now + LIMIT_RECHECK)
        if ready > now:
            return Wait("relay or domain connect delay", ready)
        found = _Search()
        n = len(self._sources)
        for i in range(n):
            source = self._sources[(self._cursor + i) % n]
            route = self._search(source, now, found)
            if route is not None:
                return route
        if found.limit:
            found.later(now + LIMIT_RECHECK)
        if found.limit or found.delayed:
            return Wait(found.limit or "connect delay", found.until)
        return self._no_route(found, "every route is unusable")

    def _gates(self, uses: Iterable[tuple[str, _Use]]) -> tuple[str, float]:
        """The first limit reached among `uses` ("" if none), and when all their delays end."""
        ready = NEVER
        for scope, use in uses:
            if use.nconn >= self.limits.max_conn(scope):
                return f"max-conn-per-{scope} reached", ready
            ready = max(ready, use.ready_at(self.limits, scope))
        return "", ready

    def _search(self, source: Source, now: float, found: _Search) -> Route | None:
        limits, state = self.limits, self.state
        limit, ready = self._gates((("source", state.sources.get(source, _FREE)),
                                    ("connector", self._connectors.get(source, _FREE))))
        if limit:
            found.limit = found.limit or limit
            return None
        if ready > now:
            found.delayed = True
            found.later(ready)
            return None
        best: tuple[tuple[int, float], Route] | None = None
        level: int | None = None
        held = False                  # a candidate at this level waits for a limit or delay
        for host in self._hosts:
            if host.preference != level:
                if best is not None or held:
                    break
                level = host.preference
            if not self._family_ok(source, host):
                found.mismatch = True
                continue
            huse = state.hosts.get(host.address, _FREE)
            if huse.nconn >= limits.max_conn("host"):
                found.limit = found.limit or "max-conn-per-host reached"
                held = True
                continue
            ready = huse.ready_at(limits, "host")
            if ready > now:
                found.delayed = held = True
                found.later(ready)
                continue
            route = Route(source, host)
            rstate = state.peek_route(route, now) or _RouteState()
            if rstate.disabled_until is not None:
                found.disabled.add(rstate.disabled_kind or ErrorKind.NETWORK)
                found.later(rstate.disabled_until)
                found.note(route, rstate)
                continue
            if rstate.nconn and not rstate.proven:
                found.limit = found.limit or "unproven route in use"
                held = True
                continue
            if rstate.nconn >= limits.max_conn("route"):
                found.limit = found.limit or "max-conn-per-route reached"
                held = True
                continue
            ready = rstate.ready_at(limits, "route")
            if ready > now:
                found.delayed = held = True
                found.later(ready)
                continue
            rank = (rstate.nconn, rstate.lastconn)
            if best is None or rank < best[0]:
                best = (rank, route)
        return best[1] if best else None

    def _family_ok(self, source: Source, host: Host) -> bool:
        family = host.family
        if source.family is not None and source.family != family:
            return False
        return self.limits.inet4 if family == 4 else self.limits.inet6

    def _no_route(self, found: _Search, why: str) -> Wait:
        if ErrorKind.NETWORK in found.disabled:
            reply = NETWORK_ERROR
        else:
            reply = NO_VALID_ROUTE
        detail = [why]
        if found.disabled:
            kinds = "/".join(sorted(k.value for k in found.disabled))
            detail.append(f"routes disabled after {kinds} errors")
        if found.mismatch:
            detail.append("address family mismatch")
        reason = f"relay {self.relay}: {'; '.join(detail)}"
        if found.last_error:
            # What went wrong, for the envelope's error line and its bounce:
            # "451 4.4.1 Network error on destination MXs (192.0.2.1:
            # Connection failed: Connection refused)".
            reply = Reply(reply.code, reply.enhanced, f"{reply.text} ({found.last_error})")
        return Wait(reason, found.until, TempFail(reply, reason))

    # -- reports

    @property
    def _domain_key(self) -> tuple[str, bool]:
        return (self.relay.domain, self.relay.as_host)

    def _uses(self, route: Route) -> list[_Use]:
        state = self.state
        return [
            self._relay,
            state.domains.setdefault(self._domain_key, _Use()),
            state.sources.setdefault(route.source, _Use()),
            self._connectors.setdefault(route.source, _Use()),
            state.hosts.setdefault(route.host.address, _Use()),
            state.route(route, state.clock()),
        ]

    def session_opened(self, route: Route) -> None:
        """Count a session starting on `route` (one `choose()` returned)."""
        if route.source not in self._sources or route.host not in self._hosts:
            raise ValueError(f"route {route} is not one of relay {self.relay}'s")
        now = self.state.clock()
        uses = self._uses(route)
        for use in uses:
            use.nconn += 1
            use.lastconn = now
        rstate = uses[-1]
        assert isinstance(rstate, _RouteState)
        if not rstate.proven:
            rstate.probing += 1
        self._open[route] += 1
        self._cursor = (self._sources.index(route.source) + 1) % len(self._sources)

    def session_closed(self, route: Route) -> float | None:
        """Count a session on `route` ending; returns the disable time if this failed it.

        A session opened on an unproven route that ends with no `route_ok`
        and no `route_error` counts as the route's failed first try
        (OpenSMTPD does the same): the route is disabled.
        """
        if self._open[route] <= 0:
            raise ValueError(f"no session open on route {route} of relay {self.relay}")
        self._open[route] -= 1
        if not self._open[route]:
            del self._open[route]
        now = self.state.clock()
        uses = self._uses(route)
        for use in uses:
            use.nconn -= 1
            use.lastdisc = now
        connector = self._connectors[route.source]
        if connector.nconn == 0 and route.source not in self._sources:
            del self._connectors[route.source]
        rstate = uses[-1]
        assert isinstance(rstate, _RouteState)
        delay = None
        if rstate.probing:
            rstate.probing -= 1
            if not rstate.proven and rstate.disabled_until is None:
                rstate.last_error = "session ended before the route was proven"
                delay = self._disable(rstate, ErrorKind.NETWORK, now)
        self.state.prune(now)
        return delay

    def route_ok(self, route: Route) -> None:
        """The session reached the remote SMTP server (greeting and EHLO accepted)."""
        rstate = self.state.route(route, self.state.clock())
        rstate.proven = True
        rstate.errors = 0
        rstate.credit = False

    def route_error(self, route: Route, reason: str,
                    kind: ErrorKind = ErrorKind.NETWORK) -> float | None:
        """Count an error on `route`; returns the seconds it is now disabled, or None.

        `reason` is for the caller's log.  An unproven route is disabled at
        once: penalty +1 (+2 if its previous penalty point was only
        forgiven on re-enable and not yet earned), for
        `15 x penalty^2` s, at most 3600.  A proven route is disabled the
        same way after `max_errors_per_route` (4) errors in a row, and must
        prove itself again.  Errors on a disabled route add nothing.
        """
        now = self.state.clock()
        rstate = self.state.route(route, now)
        if rstate.disabled_until is not None:
            return None
        rstate.last_error = reason[:200]
        if rstate.proven:
            rstate.errors += 1
            if rstate.errors < self.limits.max_errors_per_route:
                return None
            rstate.proven = False
        return self._disable(rstate, kind, now)

    def _disable(self, rstate: _RouteState, kind: ErrorKind, now: float) -> float:
        rstate.penalty = min(rstate.penalty + (2 if rstate.credit else 1), self.limits.max_penalty)
        rstate.credit = False
        rstate.errors = 0
        rstate.probing = 0            # the failed try is judged: its close adds nothing
        rstate.lastpenalty = now
        delay = self.limits.disable_delay(rstate.penalty)
        rstate.disabled_until = now + delay
        rstate.disabled_kind = kind
        return delay
