"""How a key matches one element of a list table (docs/tables.md, Lists and maps).

`check` on a static or file *list* tries each element with the service's
rule: domain wildcards, networks containing an address, address patterns.
Maps only ask "does the key exist", and dynamic backends (SQL, LDAP...) get the
key as is: there wildcards and CIDR are the query's job.

Elements are compiled once per table contents (`compile_element`) so a check
against a long list of networks does not re-parse them on every connection.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

from postillion.table.services import Service
from postillion.table.values import (
    Mailaddr, Netaddr, BadValue, parse_mailaddr, parse_netaddr, parse_regex,
)

Matcher = Callable[[str], bool]


def domain_match(pattern: str, key: str) -> bool:
    """Case-blind domain match where `*` skips ahead without backtracking.

    `*` jumps to the first occurrence in the key of the pattern's next
    character; a trailing `*` eats the rest; the whole key must be consumed.
    So `*.example.org` matches `mx.example.org` but neither `example.org` nor
    `a.b.example.org`, and `*` alone matches every key.
    """
    p, k = pattern.lower(), key.lower()
    i = j = 0
    while i < len(p):
        c = p[i]
        if c == "*":
            while i + 1 < len(p) and p[i + 1] == "*":
                i += 1
            if i + 1 == len(p):
                return True
            found = k.find(p[i + 1], j)
            if found < 0:
                return False
            i, j = i + 1, found
            continue
        if j >= len(k) or k[j] != c:
            return False
        i, j = i + 1, j + 1
    return j == len(k)


def key_netaddr(key: str) -> Netaddr | None:
    """The client address a netaddr check is about, or None if it is none.

    An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, what a dual-stack socket
    reports) is taken as the IPv4 address, so `192.0.2.0/24` still matches it.
    """
    try:
        addr = parse_netaddr("", key)
    except BadValue:
        return None
    net = addr.network
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen == 128:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            return Netaddr(ipaddress.IPv4Network(mapped))
    return addr


def mailaddr_match(element: Mailaddr, key: str, delim: str = "+") -> bool:
    """Does address `key` fit pattern `element` (docs/tables.md, Lists and maps)?

    `@` matches all; the element's domain must domain-match the key's; its
    user must equal the key's case-blind, the key's `+tag` stripped unless the
    element's user holds the delimiter itself.
    """
    if not element.user and not element.domain:
        return True
    user, at, domain = key.rpartition("@")
    if not at:
        user, domain = key, ""
    if element.domain and not domain_match(element.domain, domain):
        return False
    if element.user:
        want = element.user.lower()
        have = user.lower()
        if delim and delim not in want:
            have = have.split(delim, 1)[0]
        if have != want:
            return False
    return True


def compile_element(service: Service, element: str, delim: str = "+") -> Matcher:
    """A predicate over keys for one list element; raises `BadValue` if malformed."""
    if service is Service.DOMAIN:
        pattern = element.strip()
        if not pattern:
            raise BadValue("empty domain")
        return lambda key: domain_match(pattern, key)
    if service is Service.NETADDR:
        text = element.strip().lower()
        net = parse_netaddr("", element)

        def netaddr(key: str) -> bool:
            if key.strip().lower() == text:
                return True
            addr = key_netaddr(key)
            return addr is not None and net.contains(addr)
        return netaddr
    if service is Service.MAILADDR:
        addr = parse_mailaddr("", element)
        return lambda key: mailaddr_match(addr, key, delim)
    if service is Service.REGEX:
        regex = parse_regex("", element).pattern
        return lambda key: regex.fullmatch(key) is not None
    # string, source, relayhost...: equal text, case-blind like table keys.
    folded = element.strip().lower()
    return lambda key: key.strip().lower() == folded


def literal_key(service: Service, element: str) -> str | None:
    """The one folded key `element` matches, or None if it is a pattern.

    A domain without `*` matches only itself, case-blind; a string, source
    or relayhost element matches its own text.  Networks, address patterns
    and regexes are patterns.
    """
    if service is Service.DOMAIN:
        text = element.strip()
        return text.lower() if text and "*" not in text else None
    if service in (Service.STRING, Service.SOURCE, Service.RELAYHOST):
        return element.strip().lower()
    return None


def fold_for_literal(service: Service, key: str) -> str:
    return key.lower() if service is Service.DOMAIN else key.strip().lower()


class CompiledList:
    """A list's elements compiled for one service: first match without a scan.

    Literal elements go in a dict (folded text -> first position), patterns
    keep their matcher and position; the first match is the earliest of the
    literal hit and the patterns before it.  So `for domain <t>` over a
    million-domain db set costs a dict lookup plus its wildcards, and gives
    the same answer as trying every element in order.
    Raises BadValue (with the 1-based position) for an invalid element.
    """

    __slots__ = ("elements", "exact", "patterns", "service")

    def __init__(self, service: Service, elements: Sequence[str], delim: str = "+") -> None:
        self.service = service
        self.elements = elements
        self.exact: dict[str, int] = {}
        self.patterns: list[tuple[int, Matcher]] = []
        for index, element in enumerate(elements):
            literal = literal_key(service, element)
            if literal is not None:
                self.exact.setdefault(literal, index)
                continue
            try:
                self.patterns.append((index, compile_element(service, element, delim)))
            except BadValue as bad:
                raise InvalidElement(index + 1, element, bad) from None

    def first(self, key: str) -> str | None:
        """The first element matching `key`, as written, or None."""
        hit = self.exact.get(fold_for_literal(self.service, key)) if self.exact else None
        for index, matches in self.patterns:
            if hit is not None and index > hit:
                break
            if matches(key):
                return self.elements[index]
        return None if hit is None else self.elements[hit]


class InvalidElement(BadValue):
    def __init__(self, number: int, element: str, bad: BadValue) -> None:
        super().__init__(str(bad))
        self.number, self.element = number, element
