"""Where a domain's mail goes: MX, then A and AAAA of every MX host, in parallel.

`MxResolver.mx(domain)` is the first step of relaying (RFC 5321 §5.1): ask
for the domain's MX records, then for the addresses of every MX host at
once, and hand back the hosts lowest preference first, hosts of equal
preference in random order (so the load spreads as the domain asked).  A
domain without MX records (NODATA) is its own MX at preference 0.  Relay
hosts (`relay host`, smarthosts) are never MX-resolved: `addresses(host)`
asks only for A and AAAA.  Address literals (`[192.0.2.1]`,
`[IPv6:2001:db8::1]`) need no DNS at all.

Every DNS answer ends in *ok*, a temporary or a permanent failure, as
OpenSMTPD's mta.c ends them, with its texts (docs/architecture.md, The
MTA: DNS):

| DNS answer for the domain                        | reply                                     |
|--------------------------------------------------|-------------------------------------------|
| MX records, some host has an address             | the hosts                                 |
| no MX (NODATA)                                   | the domain itself, preference 0           |
| NXDOMAIN                                         | 550 5.1.2 Domain does not exist           |
| not a valid domain name                          | 550 5.1.2 Invalid domain name             |
| null MX (RFC 7505) or MX `localhost` only        | 556 5.1.10 Domain does not accept mail    |
| SERVFAIL, REFUSED, timeout, no nameserver        | 451 4.4.3 Temporary failure in MX lookup  |
| no MX host has an address                        | 451 4.4.4 No MX found for domain          |
| `backup` and we are the best MX left             | 451 4.4.6 Loop detected                   |

A relay host whose name does not resolve is temporary (451 4.4.4 Host not
found; 451 4.4.3 Temporary failure in host lookup): the fault is in our
configuration, not in the sender's address, so the mail waits for the fix
instead of bouncing (OpenSMTPD bounced an NXDOMAIN there).

Answers are cached for their TTL (`dnscache`); concurrent lookups of one
name share one query.  Defaults live in `DnsSettings`, the one place for
them.  Raises `TempFail` / `PermFail` (postillion.errors) carrying the
reply; `reason` names the lookup and what the DNS said, for the log.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import random
import re
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Final

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename

from postillion.config.model import SECONDS
from postillion.errors import PermFail, Reply, TempFail
from postillion.mta.dnscache import Answer, TtlCache

RESOLV_CONF: Final = "/etc/resolv.conf"


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """Every DNS limit of the MTA, with its unit: the one place for their defaults."""

    timeout: float = 5 * SECONDS       # one try to one nameserver, then the next try
    lifetime: float = 15 * SECONDS     # one query in all: every try, every nameserver
    negative_ttl: float = 60 * SECONDS  # NXDOMAIN/NODATA kept at most (less if the SOA says)
    max_ttl: float = 3600 * SECONDS    # any answer kept at most this, whatever its TTL
    cache_size: int = 10_000           # answers kept (one per name and type), LRU beyond
    max_mx: int = 32                   # MX hosts used per domain, lowest preferences first
    max_addresses: int = 32            # addresses kept per host (IPv4 and IPv6 together)
    max_queries: int = 128             # queries in flight at once, per resolver
    edns_payload: int = 1232           # octets of a UDP answer (EDNS0); larger: over TCP

    def __post_init__(self) -> None:
        for name in ("timeout", "lifetime"):
            if not getattr(self, name) > 0:
                raise ValueError(f"dns {name} must be > 0")
        for name in ("negative_ttl", "max_ttl", "cache_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"dns {name} must be >= 0")
        for name in ("max_mx", "max_addresses", "max_queries"):
            if getattr(self, name) < 1:
                raise ValueError(f"dns {name} must be >= 1")
        if not 512 <= self.edns_payload <= 65535:
            raise ValueError("dns edns_payload must be 512..65535")


DEFAULT_SETTINGS: Final = DnsSettings()

# What the envelope's sender sees (a bounce) or the queue keeps (a retry).
NO_SUCH_DOMAIN: Final = Reply(550, "5.1.2", "Domain does not exist")
INVALID_DOMAIN: Final = Reply(550, "5.1.2", "Invalid domain name")
#: RFC 7505 §4.1 and RFC 7504 §3: 556 and 5.1.10 for a null MX; an MX
#: `localhost` is the older way of saying the same, and OpenSMTPD treats both alike.
NULL_MX: Final = Reply(556, "5.1.10", "Domain does not accept mail")
MX_TEMPFAIL: Final = Reply(451, "4.4.3", "Temporary failure in MX lookup")
NO_MX: Final = Reply(451, "4.4.4", "No MX found for domain")
MX_LOOP: Final = Reply(451, "4.4.6", "Loop detected")
HOST_TEMPFAIL: Final = Reply(451, "4.4.3", "Temporary failure in host lookup")
HOST_NOT_FOUND: Final = Reply(451, "4.4.4", "Host not found")

_TEMPORARY: Final = "temporary: "

MAX_REASON: Final = 400
"""Characters of a DNS error kept in a reason (dnspython lists every nameserver)."""

_MX, _A, _AAAA, _PTR = (dns.rdatatype.MX, dns.rdatatype.A, dns.rdatatype.AAAA,
                        dns.rdatatype.PTR)
_HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\Z")


@dataclass(frozen=True, slots=True)
class MxHost:
    """One mail exchanger: its preference, its name, its addresses (IPv4 first).

    `name` is lower-case, without the final dot; for an address literal it is
    the literal as written.  Addresses are text (`192.0.2.1`, `2001:db8::1`).
    """

    preference: int
    name: str
    addresses: tuple[str, ...] = ()


class _Unanswered(Exception):
    """A query the DNS did not answer (SERVFAIL, timeout...): never cached."""


def address_literal(text: str) -> str | None:
    """The address of an RFC 5321 literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`).

    None when text is not bracketed (a name to resolve); PermFail 550 5.1.2
    when it is bracketed but holds no address.
    """
    if not (text.startswith("[") and text.endswith("]")):
        return None
    inside = text[1:-1]
    try:
        if inside[:5].lower() == "ipv6:":
            return str(ipaddress.IPv6Address(inside[5:]))
        return str(ipaddress.IPv4Address(inside))
    except ValueError:
        raise PermFail(INVALID_DOMAIN, f"invalid address literal {text!r}") from None


def canonical(name: str) -> str:
    """A host name as compared here: A-labels, lower-case, no final dot."""
    try:
        return dns.name.from_text(name).to_text(omit_final_dot=True).lower()
    except (dns.exception.DNSException, UnicodeError, ValueError):
        return name.rstrip(".").lower()


def backup_filter(hosts: Sequence[MxHost], me: str) -> list[MxHost]:
    """The MX hosts strictly better (lower preference) than our own name `me`.

    For `relay backup`: a backup MX hands mail only to MXs preferred over
    itself, or it would send the mail back to itself or to a peer backup.
    If `me` is not among the hosts, all of them (OpenSMTPD: the domain did
    not list us, so nothing says who is better).
    """
    ours = canonical(me)
    mine = [h.preference for h in hosts if canonical(h.name) == ours]
    if not mine:
        return list(hosts)
    return [h for h in hosts if h.preference < min(mine)]


def order(hosts: Sequence[MxHost], rng: random.Random | None = None) -> list[MxHost]:
    """Lowest preference first; equal preferences shuffled (RFC 5321 §5.1)."""
    shuffle = (rng or random).shuffle
    out: list[MxHost] = []
    ranked = sorted(hosts, key=lambda h: h.preference)
    for _, group in itertools.groupby(ranked, key=lambda h: h.preference):
        same = list(group)
        shuffle(same)
        out += same
    return out


def _name(text: str) -> dns.name.Name:
    """text as an absolute DNS name, or PermFail 550 5.1.2 Invalid domain name."""
    try:
        name = dns.name.from_text(text.rstrip(".") + ".")
    except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
        raise PermFail(INVALID_DOMAIN, f"invalid domain name {text!r}: {exc}") from None
    if name == dns.name.root:
        raise PermFail(INVALID_DOMAIN, f"invalid domain name {text!r}")
    return name


def _text(name: dns.name.Name) -> str:
    return "." if name == dns.name.root else name.to_text(omit_final_dot=True).lower()


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REASON else text[:MAX_REASON - 3] + "..."


def _minimum_ttl(response: dns.message.Message | None, fallback: float) -> float:
    """The TTL RFC 2308 gives an answer (the SOA's for a negative one)."""
    if response is None:
        return fallback
    try:
        return float(response.resolve_chaining().minimum_ttl)
    except dns.exception.DNSException:
        return fallback


def _servers_said(exc: dns.resolver.NoNameservers) -> str:
    """`Do53:192.0.2.53@53 answered SERVFAIL; ...`: what each nameserver said."""
    errors = exc.kwargs.get("errors") or []
    said = [f"{error[0]} answered {error[3]}" for error in errors if len(error) > 3]
    return "; ".join(said) or str(exc)


class MxResolver:
    """MX, A/AAAA and PTR lookups for the MTA, cached, over dnspython's resolver.

    `nameservers` None reads the system's configuration (`resolv_conf`,
    /etc/resolv.conf): a missing file or one without a nameserver makes
    every lookup a temporary failure, never a crash.  Else a list of
    `(ip, port)` pairs, asked in order (any port, so tests run a loopback
    server).  Search domains are never applied: a mail domain is absolute.
    """

    def __init__(self, nameservers: Sequence[tuple[str, int]] | None = None,
                 settings: DnsSettings = DEFAULT_SETTINGS, *,
                 resolv_conf: str = RESOLV_CONF,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self._rng = rng or random.Random()
        if nameservers is None:
            try:
                resolver = dns.asyncresolver.Resolver(filename=resolv_conf)
            except dns.resolver.NoResolverConfiguration:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = []
        else:
            resolver = dns.asyncresolver.Resolver(configure=False)
            servers = []
            for ip, port in nameservers:
                ipaddress.ip_address(ip)                 # ValueError: not an address
                if not 0 < int(port) < 65536:
                    raise ValueError(f"nameserver port out of range: {port}")
                servers.append(dns.nameserver.Do53Nameserver(ip, int(port)))
            resolver.nameservers = servers
        resolver.timeout = settings.timeout
        resolver.lifetime = settings.lifetime
        resolver.cache = None                            # ours keeps negatives too
        resolver.use_edns(0, 0, settings.edns_payload)
        self._resolver = resolver
        self._cache = TtlCache(settings.cache_size, clock)
        self._inflight: dict[Hashable, asyncio.Future[Answer]] = {}
        self._slots = asyncio.Semaphore(settings.max_queries)

    @property
    def nameservers(self) -> list[tuple[str, int]]:
        """The servers asked, as (ip, port)."""
        out = []
        for ns in self._resolver.nameservers:
            if isinstance(ns, dns.nameserver.Do53Nameserver):
                out.append((ns.address, ns.port))
            elif isinstance(ns, str):
                out.append((ns, 53))
        return out

    def clear_cache(self) -> None:
        """Forget every answer (e.g. after the administrator fixed a zone)."""
        self._cache.clear()

    async def mx(self, domain: str, *, backup: str | None = None) -> list[MxHost]:
        """The MX hosts of domain with their addresses, best first.

        Hosts without an address are left out; at most `max_mx` hosts (the
        best), `max_addresses` addresses each.  With `backup` (our own MX
        name, `relay backup`), only hosts better than ours (`backup_filter`).
        Raises PermFail / TempFail as the table in this module's docstring says.
        """
        literal = address_literal(domain)
        if literal is not None:
            return [MxHost(0, domain, (literal,))]
        name = _name(domain)
        label = _text(name)
        try:
            answer = await self._lookup(name, _MX)
        except _Unanswered as exc:
            raise TempFail(MX_TEMPFAIL, str(exc)) from None
        if answer.nxdomain:
            raise PermFail(NO_SUCH_DOMAIN, f"MX lookup for {label}: no such domain (NXDOMAIN)")
        exchanges = self._exchanges(label, answer)
        if backup:
            better = backup_filter(exchanges, backup)
            if not better:
                raise TempFail(MX_LOOP, f"MX lookup for {label}: backup MX {canonical(backup)}"
                                        " is the best MX left")
            exchanges = better
        found = await asyncio.gather(*(self._host(h.name) for h in exchanges))
        hosts, why = [], []
        for exchange, (addresses, reason) in zip(exchanges, found):
            if addresses:
                hosts.append(MxHost(exchange.preference, exchange.name, addresses))
            else:
                why.append(f"{exchange.name}: {reason}")
        if hosts:
            return order(hosts, self._rng)
        failed = any(reason.startswith(_TEMPORARY) for _, reason in found)
        raise TempFail(MX_TEMPFAIL if failed else NO_MX,
                       _clip(f"no MX host of {label} has an address: " + "; ".join(why)))

    def _exchanges(self, label: str, answer: Answer) -> list[MxHost]:
        """The usable MX targets (address-less MxHost), best max_mx, or the implicit MX."""
        if not answer.records:
            return [MxHost(0, label)]                    # RFC 5321 §5.1: implicit MX
        best: dict[str, int] = {}
        refused = []
        for preference, target in answer.records:
            if target in (".", "localhost"):
                refused.append(target)
                continue
            best[target] = min(preference, best.get(target, preference))
        if not best:
            what = "null MX (RFC 7505)" if "." in refused else "MX is localhost"
            raise PermFail(NULL_MX, f"MX lookup for {label}: {what}")
        exchanges = [MxHost(pref, target) for target, pref in best.items()]
        exchanges.sort(key=lambda h: h.preference)
        return exchanges[: self.settings.max_mx]

    async def addresses(self, host: str) -> list[str]:
        """A and AAAA of a relay host, in parallel (IPv4 first); no MX lookup.

        A literal (`[192.0.2.1]`, `[IPv6:...]`) or a bare IP address is its
        own answer.  Raises TempFail: 451 4.4.4 Host not found (NXDOMAIN or
        no address record), 451 4.4.3 Temporary failure in host lookup.
        """
        literal = address_literal(host)
        if literal is not None:
            return [literal]
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        label = _text(_name(host))
        addresses, why = await self._host(label)
        if addresses:
            return list(addresses)
        reply = HOST_TEMPFAIL if why.startswith(_TEMPORARY) else HOST_NOT_FOUND
        raise TempFail(reply, _clip(f"address lookup for {label}: {why}"))

    async def _host(self, host: str) -> tuple[tuple[str, ...], str | None]:
        """(addresses, why there are none) for one host name.

        A and AAAA are asked together; one family failing while the other
        answers still gives the addresses found (the failure is not cached,
        so the next attempt asks again).  With no address, the reason says
        whether the DNS failed (`temporary: ...`) or answered that there is
        none.
        """
        try:
            name = dns.name.from_text(host)
        except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
            return (), f"invalid host name: {exc}"
        results = await asyncio.gather(self._lookup(name, _A), self._lookup(name, _AAAA),
                                       return_exceptions=True)
        addresses: list[str] = []
        failures = []
        nxdomain = True
        for result in results:
            if isinstance(result, _Unanswered):
                failures.append(str(result))
            elif isinstance(result, BaseException):
                raise result
            else:
                nxdomain = nxdomain and result.nxdomain
                addresses += [a for a in result.records if a not in addresses]
        if addresses:
            return tuple(addresses[: self.settings.max_addresses]), None
        if failures:
            return (), _TEMPORARY + "; ".join(failures)
        return (), "no such host (NXDOMAIN)" if nxdomain else "no A or AAAA record"

    async def ptr(self, ip: str) -> str | None:
        """The reverse name of ip (for `relay="IP (name)"` in logs), or None.

        Only shown, never trusted: no name, a DNS failure and a name that is
        not a plain host name all give None.
        """
        try:
            name = dns.reversename.from_address(ip)
        except (dns.exception.DNSException, ValueError):
            return None
        try:
            answer = await self._lookup(name, _PTR)
        except _Unanswered:
            return None
        for target in answer.records:
            labels = target.split(".")
            if len(target) <= 253 and all(_HOST_LABEL.match(label) for label in labels):
                return target
        return None

    async def _lookup(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> Answer:
        """One (name, type) query: from the cache, joined to one in flight, or asked."""
        key = (name, rdtype)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._query(name, rdtype))
            self._inflight[key] = pending
            pending.add_done_callback(lambda done: self._landed(key, done))
        # Shielded: one caller giving up (a cancelled delivery) must not
        # cancel the query the others wait for.
        return await asyncio.shield(pending)

    def _landed(self, key: Hashable, done: asyncio.Future[Answer]) -> None:
        if self._inflight.get(key) is done:
            del self._inflight[key]
        if not done.cancelled():
            done.exception()                             # retrieved, even if nobody waits

    async def _query(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> Answer:
        """Ask the nameservers; cache what they said; _Unanswered if they did not say."""
        what = f"{dns.rdatatype.to_text(rdtype)} {_text(name)}"
        if not self._resolver.nameservers:
            raise _Unanswered("no nameserver configured")
        settings = self.settings
        async with self._slots:
            try:
                result = await self._resolver.resolve(name, rdtype, search=False,
                                                      raise_on_no_answer=False)
            except dns.resolver.NXDOMAIN as exc:
                responses = list(exc.responses().values())
                ttl = _minimum_ttl(responses[0] if responses else None, settings.negative_ttl)
                answer = Answer((), nxdomain=True)
                self._cache.put((name, rdtype), answer, min(ttl, settings.negative_ttl))
                return answer
            except dns.resolver.LifetimeTimeout:
                raise _Unanswered(f"{what}: no answer within {settings.lifetime:g}s") from None
            except dns.resolver.NoNameservers as exc:
                raise _Unanswered(_clip(f"{what}: {_servers_said(exc)}")) from None
            except (dns.exception.DNSException, OSError) as exc:
                raise _Unanswered(_clip(f"{what}: {str(exc) or type(exc).__name__}")) from None
        if result.rrset is None:                         # NODATA
            ttl = min(_minimum_ttl(result.response, settings.negative_ttl), settings.negative_ttl)
            answer = Answer(())
        else:
            ttl = min(float(result.chaining_result.minimum_ttl), settings.max_ttl)
            answer = Answer(self._records(rdtype, result.rrset))
        self._cache.put((name, rdtype), answer, ttl)
        return answer

    def _records(self, rdtype: dns.rdatatype.RdataType, rrset) -> tuple:
        if rdtype == _MX:
            return tuple(sorted({(rd.preference, _text(rd.exchange)) for rd in rrset}))
        if rdtype == _PTR:
            return tuple(_text(rd.target) for rd in rrset)
        seen: dict[str, None] = {}
        for rd in rrset:
            seen.setdefault(str(ipaddress.ip_address(rd.address)), None)
        return tuple(seen)
