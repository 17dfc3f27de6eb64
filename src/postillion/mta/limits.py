"""How hard the MTA may push on other hosts: every `mta limit` and its default, here only.

`mta limit [for domain D] KEY VALUE` (docs/configuration.md, Global options)
tunes how many sessions the MTA keeps open towards a host, a route, a
source address, a relay or a destination domain, and how long it waits
between two connections.  The defaults are OpenSMTPD 6.8's; a field is named
as its keyword (`-` -> `_`), delays are seconds.  The limits without a
keyword (client timeouts, the route penalty rule) sit beside them so the
route model and the SMTP client read one object.

`limits_for()` applies the config's global lines, then the lines written
`for domain D` for the relay's domain, over these defaults.  Values may be
0: `max-conn-per-domain 0` holds a domain's mail in the queue (no session is
ever opened) until the limit is raised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Final

from postillion.config.model import MtaLimit, MtaOptions

SECONDS = 1.0
MINUTES = 60 * SECONDS
HOURS = 60 * MINUTES

#: The places a count of open sessions and the times of their connects and
#: disconnects are kept (docs/architecture.md, The MTA): a remote address, a
#: (source, address) pair, one of our addresses, a relay's use of a source,
#: a relay, a destination domain.
SCOPES: Final = ("host", "route", "source", "connector", "relay", "domain")


@dataclass(frozen=True, slots=True)
class MtaLimits:
    """The MTA's limits for one relay (docs/configuration.md lists them for the manual).

    `max_conn_per_*` caps the sessions open at once; a session may start only
    `conn_delay_*` seconds after the last one started and `reconn_delay_*`
    seconds after the last one ended on the same host, route, source,
    connector (a relay's use of one source), relay or domain.
    """

    max_conn_per_host: int = 10           # mta limit max-conn-per-host: sessions to one remote address
    max_conn_per_route: int = 5           # mta limit max-conn-per-route: per (source, remote address)
    max_conn_per_source: int = 100        # mta limit max-conn-per-source: from one local address
    max_conn_per_connector: int = 20      # mta limit max-conn-per-connector: per (relay, source)
    max_conn_per_relay: int = 100         # mta limit max-conn-per-relay
    max_conn_per_domain: int = 100        # mta limit max-conn-per-domain: destination domain
    conn_delay_host: float = 0 * SECONDS       # mta limit conn-delay-host: between two connects
    conn_delay_route: float = 5 * SECONDS      # mta limit conn-delay-route
    conn_delay_source: float = 0 * SECONDS     # mta limit conn-delay-source
    conn_delay_connector: float = 0 * SECONDS  # mta limit conn-delay-connector
    conn_delay_relay: float = 2 * SECONDS      # mta limit conn-delay-relay
    conn_delay_domain: float = 0 * SECONDS     # mta limit conn-delay-domain
    reconn_delay_host: float = 0 * SECONDS       # mta limit reconn-delay-host: after a disconnect
    reconn_delay_route: float = 3 * SECONDS      # mta limit reconn-delay-route
    reconn_delay_source: float = 0 * SECONDS     # mta limit reconn-delay-source
    reconn_delay_connector: float = 0 * SECONDS  # mta limit reconn-delay-connector
    reconn_delay_relay: float = 0 * SECONDS      # mta limit reconn-delay-relay
    reconn_delay_domain: float = 0 * SECONDS     # mta limit reconn-delay-domain
    session_mail_max: int = 100           # mta limit session-mail-max: messages per session
    max_failures_per_session: int = 25    # mta limit max-failures-per-session: in a row, then close
    # Ours (OpenSMTPD 6.8 has no such key): the MX host names tried, best
    # preference first; further names are never connected to.  Postfix caps
    # the same way (smtp_mx_address_limit, 5).
    max_mx_tried: int = 5                 # mta limit max-mx-tried
    inet4: bool = True                    # mta limit inet4: only IPv4 (sets inet6 False)
    inet6: bool = True                    # mta limit inet6: only IPv6 (sets inet4 False)
    # No keyword: the SMTP client's timeouts.
    connect_timeout: float = 30 * SECONDS    # TCP connect, then the route has failed
    reply_timeout: float = 300 * SECONDS     # each reply (RFC 5321 4.5.3.2)
    data_timeout: float = 600 * SECONDS      # the reply after the final dot
    # No keyword: the route penalty rule.  A route failing its first try is
    # disabled route_penalty_base x penalty^2 seconds, at most
    # route_disable_max; a proven route is disabled after
    # max_errors_per_route errors in a row (OpenSMTPD's seed rule).
    route_penalty_base: float = 15 * SECONDS
    route_disable_max: float = 1 * HOURS
    max_errors_per_route: int = 4

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, bool) and value < 0:
                raise ValueError(f"mta limit {f.name.replace('_', '-')} must not be negative")
        if not (self.inet4 or self.inet6):
            raise ValueError("mta limits allow neither IPv4 nor IPv6")
        if self.route_penalty_base <= 0:
            raise ValueError("route_penalty_base must be positive")

    def max_conn(self, scope: str) -> int:
        """`max-conn-per-SCOPE` for one of SCOPES."""
        return int(getattr(self, f"max_conn_per_{_scope(scope)}"))

    def conn_delay(self, scope: str) -> float:
        """`conn-delay-SCOPE`: seconds between two connects on one of SCOPES."""
        return float(getattr(self, f"conn_delay_{_scope(scope)}"))

    def reconn_delay(self, scope: str) -> float:
        """`reconn-delay-SCOPE`: seconds after a disconnect before the next connect."""
        return float(getattr(self, f"reconn_delay_{_scope(scope)}"))

    @property
    def max_penalty(self) -> int:
        """The penalty at which the disable time reaches route_disable_max (16 by default).

        A penalty never grows past it: further failures cannot make the
        route wait longer, and the count stays bounded.
        """
        return max(1, math.ceil(math.sqrt(self.route_disable_max / self.route_penalty_base)))

    def disable_delay(self, penalty: int) -> float:
        """Seconds a route with `penalty` stays disabled: 15 x penalty^2, at most 3600."""
        return min(self.route_penalty_base * penalty * penalty, self.route_disable_max)


def _scope(scope: str) -> str:
    if scope not in SCOPES:
        raise ValueError(f"unknown mta limit scope {scope!r}")
    return scope


#: Fields that no `mta limit KEY` sets: inet4/inet6 come as a family line,
#: the rest have no keyword.
_UNKEYED: Final = frozenset({
    "inet4", "inet6", "connect_timeout", "reply_timeout", "data_timeout",
    "route_penalty_base", "route_disable_max", "max_errors_per_route",
})

#: `mta limit` KEY -> MtaLimits field, for every key that takes a value.
KEYS: Final[dict[str, str]] = {
    f.name.replace("_", "-"): f.name for f in fields(MtaLimits) if f.name not in _UNKEYED
}

#: The key the config parser records for `mta limit inet4` / `inet6`, whose
#: value is the family (4 or 6).
FAMILY_KEY: Final = "family"


def _normal_domain(domain: str) -> str:
    return domain.rstrip(".").lower()


def _apply(changes: dict[str, object], line: MtaLimit) -> None:
    if line.key == FAMILY_KEY:
        if line.value not in (4, 6):
            raise ValueError(f"mta limit family must be 4 or 6, got {line.value}")
        changes["inet4"] = line.value == 4
        changes["inet6"] = line.value == 6
        return
    name = KEYS.get(line.key)
    if name is None:
        raise ValueError(f"unknown mta limit {line.key!r}")
    changes[name] = line.value


def limits_for(options: MtaOptions, domain: str | None = None) -> MtaLimits:
    """The limits a relay to `domain` works under: defaults, global lines, then `for domain`.

    Lines apply in the order written, so a later line wins; every line
    `for domain D` (D compared without case or a final dot, never as a
    parent of subdomains) applies after all global lines, wherever it is
    written.  (OpenSMTPD copies the global limits when it meets the first
    `for domain D` line, so a global line written after it does not reach
    D; here it does, unless D sets the same key.)  `domain` None: the
    global limits only.  Raises ValueError on a key the parser would not have
    accepted (a bug, not a config error).
    """
    changes: dict[str, object] = {}
    for line in options.limits:
        if line.domain is None:
            _apply(changes, line)
    if domain is not None:
        want = _normal_domain(domain)
        for line in options.limits:
            if line.domain is not None and _normal_domain(line.domain) == want:
                _apply(changes, line)
    return replace(MtaLimits(), **changes)  # type: ignore[arg-type]
