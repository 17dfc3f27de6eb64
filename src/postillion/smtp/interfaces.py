"""What `listen on WORD` binds: an address, a host name, an interface, or
the `egress` group -- resolved once, before anything is bound.

OpenSMTPD reads `listen on IF` as an interface name or group first and a
host name only after.  On Linux there are no interface groups, so `egress`
here means what it means on OpenBSD: the interfaces that carry a default
route (`/proc/net/route`, `/proc/net/ipv6_route`).  An interface's IPv4
address comes from SIOCGIFADDR, its IPv6 addresses from
`/proc/net/if_inet6` (link-local ones left out: they need a scope id and no
client reaches them across a router).

`resolve` runs in the daemon's `prepare`, which `postillion check` runs
too, so a word the daemon cannot bind is refused by both, naming the line.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from typing import Final

#: Words that mean "every address": one wildcard socket per family.
WILDCARD: Final = frozenset({"all", "*"})

_SIOCGIFADDR: Final = 0x8915
_IN6_LINK_LOCAL_SCOPE: Final = 0x20


class ListenAddressError(Exception):
    """The word names nothing this machine can listen on; the text says why."""


def interface_names() -> set[str]:
    return {name for _, name in socket.if_nameindex()}


def ipv4_address(name: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            raw = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None            # no IPv4 address on it
    return socket.inet_ntoa(raw[20:24])


def ipv6_addresses(name: str) -> list[str]:
    out = []
    try:
        with open("/proc/net/if_inet6") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        if len(fields) == 6 and fields[5] == name and int(fields[3], 16) != _IN6_LINK_LOCAL_SCOPE:
            out.append(str(ipaddress.IPv6Address(bytes.fromhex(fields[0]))))
    return out


def egress_interfaces() -> set[str]:
    """Interfaces carrying a default route, IPv4 or IPv6."""
    names = set()
    try:
        with open("/proc/net/route") as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 1 and fields[1] == "00000000":
                    names.add(fields[0])
    except OSError:
        pass
    try:
        with open("/proc/net/ipv6_route") as f:
            for line in f.read().splitlines():
                fields = line.split()
                if len(fields) == 10 and fields[0] == "0" * 32 and fields[1] == "00" \
                        and fields[9] != "lo":
                    names.add(fields[9])
    except OSError:
        pass
    return names


def interface_addresses(name: str, family: int) -> list[str]:
    addresses = []
    if family in (socket.AF_UNSPEC, socket.AF_INET) and (v4 := ipv4_address(name)):
        addresses.append(v4)
    if family in (socket.AF_UNSPEC, socket.AF_INET6):
        addresses += ipv6_addresses(name)
    return addresses


def resolve(word: str, port: int, family: int) -> list[str] | None:
    """The addresses to bind for `listen on WORD`; None means every address.

    Raises ListenAddressError when the word is nothing this machine has."""
    if word in WILDCARD:
        return None
    if word == "localhost":
        return ["::1" if family == socket.AF_INET6 else "127.0.0.1"]
    if word == "egress" or word in interface_names():
        names = sorted(egress_interfaces()) if word == "egress" else [word]
        if not names:
            raise ListenAddressError("no interface carries a default route (egress)")
        addresses = [a for n in names for a in interface_addresses(n, family)]
        if not addresses:
            raise ListenAddressError(f"interface {word} has no address to listen on")
        return addresses
    try:
        infos = socket.getaddrinfo(word, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except (OSError, UnicodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ListenAddressError(f"{word} is neither an interface nor a host name that "
                                 f"resolves ({reason})") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_bindable(addresses: list[str] | None, family: int) -> None:
    """Bind each address on port 0 and let go: an address that is not this
    machine's is refused now, by check and run alike.  (Whether the real
    port is free is for the moment of the real bind.)"""
    for address in addresses or []:
        af = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(af, socket.SOCK_STREAM) as s:
            try:
                s.bind((address, 0))
            except OSError as e:
                raise ListenAddressError(f"{address} is not an address of this machine "
                                         f"({e.strerror or e})") from None
