"""Match evaluation: which action (or reject) a (session, sender, recipient) gets.

docs/configuration.md, match: rules are tried in order and the first match wins; `reject` or
no match at all refuses the recipient (`550 5.7.1`, relay denied), which is
what keeps Postillion from ever being an open relay: a recipient is accepted
only when a rule the administrator wrote says so.  A table that cannot answer
raises `LookupUnavailable` (`451 4.3.0`), never "no match".
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Mapping, Sequence

from postillion.config.model import ActionDecl, Config, Criterion, MatchDecl
from postillion.table.services import Service
from postillion.table.table import Table


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """What the rules may know of the client, fixed for the whole session.

    `address` is the client IP as text ("local" for a local socket);
    `is_local` is true when the connection comes from this host (the `from
    local` of docs/configuration.md: loopback, or the client's address is the address it
    reached us on).  `authenticated` and `user` say whether and as whom the
    client passed AUTH; `tls` whether the session is encrypted (`match tls`).
    """

    address: str
    is_local: bool
    authenticated: bool = False
    user: str = ""
    tls: bool = False


def is_local_address(peer: str, sockname: str) -> bool:
    """`from local`: a loopback client, or one that is one of our addresses."""
    if peer == "local":
        return True
    try:
        ip = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if ip.is_loopback or peer == sockname:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return False


def local_names(hostname: str) -> frozenset[str]:
    """`for local` = `<localnames>`: localhost, our names, loopback literals."""
    names = {"localhost", "localhost.localdomain", hostname.lower(),
             socket.gethostname().lower(), "[127.0.0.1]", "[ipv6:::1]"}
    return frozenset(names)


def auth_service(c: Criterion, user: str = "") -> Service:
    """The service an `auth <t>` criterion checks its table with."""
    if getattr(c, "regex", False):
        return Service.REGEX
    return Service.MAILADDR if "@" in user else Service.STRING


class Ruleset:
    """The config's `match` rules bound to live tables."""

    def __init__(self, config: Config, tables: Mapping[str, Table]) -> None:
        self._matches: Sequence[MatchDecl] = config.matches
        self._actions = config.actions
        self._tables = tables
        self._localnames = local_names(config.hostname) | {
            listener.hostname.lower() for listener in config.listeners if listener.hostname}

    async def match(self, facts: SessionFacts, sender: str, rcpt: str) -> ActionDecl | None:
        """The action of the first rule all of whose criteria hold, or None.

        None covers both `reject` and "no rule matched": the caller answers
        `550 5.7.1`.  `rcpt` is `local@domain`.
        """
        return self.action_of(await self.first_rule(facts, sender, rcpt))

    async def first_rule(self, facts: SessionFacts, sender: str, rcpt: str) -> MatchDecl | None:
        """The first rule all of whose criteria hold (a `reject` one
        included), or None: which line decided, for `postillion route`."""
        domain = rcpt.rpartition("@")[2].lower()
        for rule in self._matches:
            if await self._holds(rule, facts, domain):
                return rule
        return None

    def action_of(self, rule: MatchDecl | None) -> ActionDecl | None:
        """The action a rule found by `first_rule` gives; None for `reject` or no rule."""
        return self._actions[rule.action] if rule is not None and rule.action is not None else None

    async def _holds(self, rule: MatchDecl, facts: SessionFacts, domain: str) -> bool:
        for criterion in rule.criteria:
            if await self._test(criterion, facts, domain) == criterion.negate:
                return False
        return True

    async def _test(self, c: Criterion, facts: SessionFacts, domain: str) -> bool:
        kind = c.kind
        if kind == "from-any":
            return True
        if kind == "from-local":
            # AUTH sessions are not `local` (docs/configuration.md): write `match auth ...`.
            return facts.is_local and not facts.authenticated
        if kind == "from-src":
            return await self._table(c).check(Service.NETADDR, facts.address)
        if kind == "for-any":
            return True
        if kind == "for-local":
            return domain in self._localnames
        if kind == "for-domain":
            return await self._table(c).check(Service.DOMAIN, domain)
        if kind in ("auth", "from-auth"):
            # `auth [<t>]`: an authenticated session, whose user (if a table
            # is given) is in it -- as a regex, a mailaddr when it has an @,
            # else a plain string (docs/tables.md).
            if not facts.authenticated:
                return False
            if c.table is None:
                return True
            return await self._table(c).check(auth_service(c, facts.user), facts.user)
        if kind == "tls":
            return facts.tls
        raise ValueError(f"unknown match criterion {kind!r}")  # the parser never builds one

    def _table(self, c: Criterion) -> Table:
        assert c.table is not None, c
        return self._tables[c.table]
