"""Relay URLs: `[scheme://][label@]host[:port]`, checked once here.

A scheme means what it meant in the grammar that wrote it (docs/configuration.md,
The 2012 grammar): `smtp+tls://` was opportunistic in a 2012 `relay via` and is
mandatory TLS in a 6.8 `relay host`.  Both grammars produce a `RelayHost`
holding the modern meaning, so the MTA never needs to know which grammar a
config used.  The label rules (Relay URLs) that need the whole action (`auth
<t>` without a label, a label without `auth <t>`) are checked by the parser.
"""

from __future__ import annotations

import ipaddress
import re

from postillion.config.lexer import Token
from postillion.config.model import RelayHost
from postillion.config.stream import Syntax

#: `relay host` schemes of 6.8 (docs/configuration.md): scheme -> modern scheme.
MODERN_SCHEMES = {
    "smtp": "smtp", "smtp+tls": "smtp+tls", "smtp+notls": "smtp+notls",
    "smtps": "smtps", "lmtp": "lmtp",
}
#: 2012 `relay via` schemes [seed]: scheme -> (modern scheme, needs a label).
#: `backup` is not a transport: the caller turns it into `relay backup`.
LEGACY_SCHEMES = {
    "smtp": ("smtp", False), "smtp+tls": ("smtp", False),
    "tls": ("smtp+tls", False), "tls+auth": ("smtp+tls", True),
    "smtps": ("smtps", False), "smtps+auth": ("smtps", True),
    "ssl": ("ssl", False), "ssl+auth": ("ssl", True),
    "lmtp": ("lmtp", False), "backup": ("backup", False),
}

_LABEL = re.compile(r"[A-Za-z0-9_.+-]{1,64}\Z")
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


def host_name(text: str) -> bool:
    """A DNS name as a relay host: dot-separated labels, no trailing dot, <= 255."""
    if not text or len(text) > 255:
        return False
    return all(_HOST_LABEL.match(label) for label in text.split("."))


def _literal(inside: str) -> bool:
    """`[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 §4.1.3), brackets stripped."""
    if inside[:5].lower() == "ipv6:":
        try:
            ipaddress.IPv6Address(inside[5:])
            return True
        except ValueError:
            return False
    try:
        ipaddress.IPv4Address(inside)
        return True
    except ValueError:
        return False


def parse_url(tok: Token, legacy: bool = False) -> tuple[RelayHost, bool]:
    """The RelayHost a URL token means, and whether its 2012 scheme needs a label.

    Raises `Syntax` at the token: unknown scheme (with the known ones), bad
    label, host or port, a label on a scheme without mandatory TLS, `lmtp`
    without a port.  With `legacy` the scheme is read as a 2012 `relay via`
    wrote it; the returned scheme "backup" asks the caller for `relay backup`.
    """
    text = tok.text
    table = LEGACY_SCHEMES if legacy else MODERN_SCHEMES
    scheme_written, sep, rest = text.partition("://")
    if not sep:
        scheme_written, rest = "smtp", text
    entry = table.get(scheme_written.lower())
    if entry is None:
        known = ", ".join(f"{name}://" for name in table)
        raise Syntax(tok.pos, f"unknown relay URL scheme {scheme_written + '://'!r}"
                              f" in {tok.describe()}; expected one of {known}")
    scheme, needs_label = entry if isinstance(entry, tuple) else (entry, False)
    label = None
    if "@" in rest:
        label, _, rest = rest.rpartition("@")
        if not _LABEL.match(label):
            raise Syntax(tok.pos, f"invalid relay label {label!r} in {tok.describe()}")
    port: int | None = None
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0 or not _literal(rest[1:close]):
            raise Syntax(tok.pos, f"invalid address literal in relay URL {tok.describe()}")
        host, tail = rest[: close + 1], rest[close + 1:]
    else:
        host, colon, port_text = rest.partition(":")
        tail = colon + port_text
        if not host_name(host):
            raise Syntax(tok.pos, f"invalid host name {host!r} in relay URL {tok.describe()}")
    if tail:
        digits = tail[1:]
        if not tail.startswith(":") or not digits.isascii() or not digits.isdigit() \
                or len(digits) > 5 or not 1 <= int(digits) <= 65535:
            raise Syntax(tok.pos, f"invalid port in relay URL {tok.describe()} (1..65535)")
        port = int(digits)
    if scheme == "lmtp" and port is None:
        raise Syntax(tok.pos, f"lmtp:// needs a port: {tok.describe()}")
    relay = RelayHost(scheme, host, port, label)
    if label is not None and not relay.tls_mandatory:
        hint = "tls+auth://" if legacy else "smtp+tls:// or smtps://"
        raise Syntax(tok.pos, f"relay label {label!r} needs a scheme with mandatory TLS"
                              f" ({hint}): credentials are never sent in clear")
    if needs_label and label is None:
        raise Syntax(tok.pos, f"{scheme_written}:// needs a label: "
                              f"{scheme_written}://LABEL@{host}")
    return relay, needs_label
