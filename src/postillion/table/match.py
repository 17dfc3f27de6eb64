"""How a key matches one element of a list table (SPEC §1.4).

`check` on a static or file *list* tries each element with the service's
rule: domain wildcards, networks containing an address, address patterns.
Maps only ask "does the key exist", and dynamic backends (SQL, LDAP...) get the
key as is: there wildcards and CIDR are the query's job.

Elements are compiled once per table contents (`compile_element`) so a check
against a long list of networks does not re-parse them on every connection.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

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
    """Does address `key` fit pattern `element` (SPEC §1.4 *mailaddr*)?

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
