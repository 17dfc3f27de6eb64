"""Typed table values, and the one parser per service that builds them.

Backends answer with raw strings (docs/tables.md); this module is the only place
those strings are read.  Everything a lookup hands to `lookup/`, `smtp/` or
`mta/` is one of the frozen dataclasses below, validated when built, so a
delivery agent never sees a uid that is not a number or a home that is not
absolute.

A string that does not fit its service raises `MalformedValue` naming table,
service, key and what is wrong; never the value, which may be a password hash
or a secret.  The `Table` turns that into a temporary failure (451 4.3.0).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias, Union

from postillion.shellsyntax import shell_syntax
from postillion.table.errors import MalformedValue
from postillion.table.services import Service

Network: TypeAlias = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address: TypeAlias = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

MAX_UID: Final = 2**32 - 2      # (uid_t)-1 means "no change" to setuid(2)
MAX_NAME: Final = 255           # domain / host name, RFC 1035 §2.3.4


class BadValue(Exception):
    """What is wrong with a value, in words safe to log (never the value).

    Internal to `table/`: parsers raise it, `parse_value` wraps it into
    `MalformedValue` with table, service and key.
    """


# --------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class ExpandList:
    """alias: the targets a key expands to, in order (docs/tables.md, Alias targets).

    Targets are kept as text; `target_kind` tells `|command`, `/path`,
    `:include:`, `error:`, addresses and users apart, for the table's load
    check and for `lookup/` alike.
    """

    targets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Domain:
    """domain: a domain name, lowercased; a list element may hold `*`."""

    name: str


@dataclass(frozen=True, slots=True)
class Credentials:
    """credentials: who may authenticate, and the secret to check.

    For a listener the secret is a bcrypt or SHA-crypt hash; for a relay it is
    the cleartext password.  It is left out of repr so it never reaches a log.
    """

    username: str
    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Netaddr:
    """netaddr: a network (an address is a /32 or /128), or `local`."""

    network: Network | Literal["local"]

    def contains(self, other: Netaddr) -> bool:
        """True if `other` (a client address) lies inside this element."""
        if self.network == "local" or other.network == "local":
            return self.network == other.network
        mine, theirs = self.network, other.network
        if mine.version != theirs.version:
            return False
        return theirs.subnet_of(mine)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Userinfo:
    """userinfo: the system identity a virtual or local user delivers as."""

    username: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True, slots=True)
class Source:
    """source: a local address to bind outgoing connections to."""

    address: Address


@dataclass(frozen=True, slots=True)
class Mailaddr:
    """mailaddr: an address pattern; an empty part matches any (docs/tables.md).

    `@` is user="" domain="" (matches all); `@dom` is user=""; a bare `user`
    is domain="" and, our choice, matches that user at any domain.  The
    domain may use `*` as in domain lists.  Case is kept; matching is
    case-blind.
    """

    user: str
    domain: str

    def __str__(self) -> str:
        if not self.domain:
            return self.user or "@"
        return f"{self.user}@{self.domain}"


@dataclass(frozen=True, slots=True)
class Addrname:
    """addrname: the host name to announce for a local address (HELO)."""

    name: str


@dataclass(frozen=True, slots=True)
class Mailaddrmap:
    """mailaddrmap: the sender patterns an authenticated user may use."""

    patterns: tuple[Mailaddr, ...]


@dataclass(frozen=True, slots=True)
class Relayhost:
    """relayhost: a relay URL (docs/configuration.md), parsed by `mta/` when it relays."""

    url: str


@dataclass(frozen=True, slots=True)
class String:
    """string: a plain string, used as written."""

    value: str


@dataclass(frozen=True, slots=True)
class Regex:
    """regex: a compiled Python pattern, applied with fullmatch."""

    pattern: re.Pattern[str]


Value: TypeAlias = Union[
    ExpandList, Domain, Credentials, Netaddr, Userinfo, Source, Mailaddr,
    Addrname, Mailaddrmap, Relayhost, String, Regex,
]


# -------------------------------------------------------------------- parsers


def _no_blanks(raw: str, what: str) -> str:
    text = raw.strip()
    if not text:
        raise BadValue(f"empty {what}")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise BadValue(f"{what} contains blanks or control characters")
    return text


def split_targets(raw: str) -> tuple[str, ...]:
    """Split an alias value on unquoted commas (docs/tables.md, Alias targets).

    `\\x` stands for `x` (a comma, quote or backslash taken literally); a
    double-quoted stretch keeps its commas and its quotes, so a command keeps
    its shell quoting, except that a target quoted as a whole loses the outer
    pair (Sendmail's `"|/usr/bin/vacation"`).  Targets are trimmed and empty
    ones dropped; a value with no target at all is malformed.
    """
    targets: list[str] = []
    buf: list[str] = []
    quoted = False
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == "\\":
            if i + 1 == len(raw):
                raise BadValue("ends with a lone backslash")
            buf.append(raw[i + 1])
            i += 2
            continue
        if c == '"':
            quoted = not quoted
            buf.append(c)
        elif c == "," and not quoted:
            targets.append("".join(buf))
            buf = []
        else:
            buf.append(c)
        i += 1
    if quoted:
        raise BadValue("unterminated double quote")
    targets.append("".join(buf))
    out = []
    for target in targets:
        target = target.strip()
        if len(target) >= 2 and target[0] == target[-1] == '"':
            target = target[1:-1].strip()
        if target:
            out.append(target)
    if not out:
        raise BadValue("no target")
    return tuple(out)


_USER_TARGET: Final = re.compile(r"[A-Za-z0-9_.+-]+\Z")


TargetKind = Literal["error", "include", "command", "file", "address", "user"]


def target_kind(target: str) -> TargetKind:
    """Which kind of alias target `target` is, by its first characters.

    The one classification both the table (to check a value at load) and
    recipient expansion (to act on it) use; `check_target` says whether the
    rest of the target is well formed for its kind.
    """
    lowered = target.lower()
    if lowered.startswith(("error:", ":error:")):
        return "error"
    if lowered.startswith(":include:"):
        return "include"
    if target.startswith("|"):
        return "command"
    if target.startswith("/"):
        return "file"
    if "@" in target:
        return "address"
    return "user"


def error_target(target: str) -> tuple[int, str]:
    """`error:NNN text` / `:error:NNN text` -> (NNN, text); BadValue unless
    NNN is a 4xx or 5xx code."""
    body = target.split(":", 2)[2] if target.startswith(":") else target.split(":", 1)[1]
    code, _, text = body.strip().partition(" ")
    if not (len(code) == 3 and code.isascii() and code.isdigit() and code[0] in "45"):
        raise BadValue("error: target wants a 4xx or 5xx code")
    return int(code), text.strip()




def check_target(target: str) -> None:
    """Raise BadValue unless `target` is a well-formed target of its kind.

    `error:NNN text` (or `:error:`, NNN starting 4 or 5), `:include:/abs`,
    `|command`, `/abs/path` (mbox) or `/abs/path/` (maildir), `local@domain`,
    or a bare `user` (letters, digits, `_ . + -`).  Checked when a table is
    loaded and by `makemap -t aliases`, so a typo is found by the
    administrator, not by the first sender to that alias.
    """
    if any(not c.isprintable() for c in target):
        raise BadValue("target contains control characters")
    kind = target_kind(target)
    if kind == "error":
        error_target(target)
    elif kind == "include":
        if not target[len(":include:"):].strip().startswith("/"):
            raise BadValue(":include: target wants an absolute path")
    elif kind == "command":
        if not target[1:].strip():
            raise BadValue("| target without a command")
        shown = shell_syntax(target[1:])
        if shown is not None:
            raise BadValue(f"| target uses the shell syntax {shown!r}; commands run without"
                           " a shell (quote it, or use a script)")
        try:
            shlex.split(target[1:])
        except ValueError as e:
            raise BadValue(f"| target cannot be split into words: {e}") from None
    elif kind == "address":
        local, _, domain = target.rpartition("@")
        if not local or not domain or any(c.isspace() for c in target):
            raise BadValue("target is not a valid address")
    elif kind == "user" and not _USER_TARGET.match(target):
        raise BadValue("target is not a user, an address, a /path, a |command,"
                       " :include: or error:")


def parse_alias(key: str, raw: str) -> ExpandList:
    """Comma-separated targets (`split_targets`), each of a known kind."""
    targets = split_targets(raw)
    for number, target in enumerate(targets, 1):
        try:
            check_target(target)
        except BadValue as bad:
            raise BadValue(f"target {number}: {bad}") from None
    return ExpandList(targets)


def parse_domain(key: str, raw: str) -> Domain:
    name = _no_blanks(raw, "domain").lower()
    if len(name) > MAX_NAME:
        raise BadValue(f"domain longer than {MAX_NAME} characters")
    return Domain(name)


def parse_credentials(key: str, raw: str) -> Credentials:
    """`user:secret`, or `secret` alone with the key as user [6.8]."""
    if not raw:
        raise BadValue("empty value")
    user, sep, secret = raw.partition(":")
    if not sep:
        user, secret = key, raw
    if not user:
        raise BadValue("empty user name")
    if not secret:
        raise BadValue("empty secret")
    if any(c in "\r\n\0" for c in raw):
        raise BadValue("contains CR, LF or NUL")
    return Credentials(user, secret)


def _strip_brackets(text: str) -> str:
    """`[192.0.2.1]` and `IPv6:2001:db8::1` (address literal forms) to bare."""
    if len(text) >= 2 and text[0] == "[" and text[-1] == "]":
        text = text[1:-1]
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    return text


def parse_netaddr(key: str, raw: str) -> Netaddr:
    """`local`, an address (a /32 or /128 network) or a CIDR network.

    Host bits set under the mask (`192.0.2.1/24`) are accepted and masked, as
    an administrator writing a client's address with its prefix means.
    """
    text = _no_blanks(raw, "network")
    if text.lower() == "local":
        return Netaddr("local")
    try:
        return Netaddr(ipaddress.ip_network(_strip_brackets(text), strict=False))
    except ValueError:
        raise BadValue("not an address, a network or local") from None


def _decimal(text: str, what: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise BadValue(f"{what} is not a decimal number")
    number = int(text)
    if number > MAX_UID:
        raise BadValue(f"{what} out of range")
    return number


def parse_userinfo(key: str, raw: str) -> Userinfo:
    """`uid:gid:home` (user = key) or the 2012 `user:uid:gid:home` (docs/tables.md).

    Split on `:`; if fields 1-2 are decimal and the rest starts with `/`, it
    is the 3-field form; else if fields 2-3 are decimal and the rest starts
    with `/`, the 4-field form; else malformed.  The home may hold colons.
    """
    fields = raw.strip().split(":")
    if len(fields) >= 3 and all(f.isascii() and f.isdigit() for f in fields[:2]):
        home = ":".join(fields[2:])
        if home.startswith("/"):
            return Userinfo(key, _decimal(fields[0], "uid"), _decimal(fields[1], "gid"),
                            _home(home))
    if len(fields) >= 4 and all(f.isascii() and f.isdigit() for f in fields[1:3]):
        home = ":".join(fields[3:])
        if home.startswith("/"):
            if not fields[0]:
                raise BadValue("empty user name")
            return Userinfo(fields[0], _decimal(fields[1], "uid"), _decimal(fields[2], "gid"),
                            _home(home))
    if len(fields) < 3:
        raise BadValue("expected uid:gid:home")
    raise BadValue("expected uid:gid:home with decimal uid and gid and an absolute home")


def _home(home: str) -> str:
    if any(not c.isprintable() for c in home):
        raise BadValue("home contains control characters")
    return home


def parse_source(key: str, raw: str) -> Source:
    text = _no_blanks(raw, "source address")
    try:
        return Source(ipaddress.ip_address(_strip_brackets(text)))
    except ValueError:
        raise BadValue("not an IP address") from None


def parse_mailaddr(key: str, raw: str) -> Mailaddr:
    """`user`, `@dom`, `user@dom`, `user@*.dom` or `@` (docs/tables.md)."""
    text = _no_blanks(raw, "address")
    if "@" not in text:
        return Mailaddr(text, "")
    user, _, domain = text.rpartition("@")
    if user and not domain:
        raise BadValue("address ends with @")
    return Mailaddr(user, domain)


def parse_addrname(key: str, raw: str) -> Addrname:
    name = _no_blanks(raw, "host name")
    if len(name) > MAX_NAME:
        raise BadValue(f"host name longer than {MAX_NAME} characters")
    return Addrname(name)


def parse_mailaddrmap(key: str, raw: str) -> Mailaddrmap:
    patterns = tuple(parse_mailaddr(key, part) for part in raw.split(",") if part.strip())
    if not patterns:
        raise BadValue("no address pattern")
    return Mailaddrmap(patterns)


def parse_relayhost(key: str, raw: str) -> Relayhost:
    return Relayhost(_no_blanks(raw, "relay URL"))


def parse_string(key: str, raw: str) -> String:
    return String(raw)


def parse_regex(key: str, raw: str) -> Regex:
    try:
        return Regex(re.compile(raw))
    except (re.error, RecursionError, OverflowError):
        raise BadValue("invalid regular expression") from None


def _check_only(key: str, raw: str) -> Value:
    raise BadValue("auth is a check-only service")


PARSERS: Final[dict[Service, Callable[[str, str], Value]]] = {
    Service.ALIAS: parse_alias,
    Service.DOMAIN: parse_domain,
    Service.CREDENTIALS: parse_credentials,
    Service.NETADDR: parse_netaddr,
    Service.USERINFO: parse_userinfo,
    Service.SOURCE: parse_source,
    Service.MAILADDR: parse_mailaddr,
    Service.ADDRNAME: parse_addrname,
    Service.MAILADDRMAP: parse_mailaddrmap,
    Service.RELAYHOST: parse_relayhost,
    Service.STRING: parse_string,
    Service.REGEX: parse_regex,
    Service.AUTH: _check_only,
}


def parse_value(service: Service, key: str, raw: str, *, table: str = "") -> Value:
    """Build the typed value of `service` from a backend's raw string.

    `key` is the (lowercased) key looked up; some forms take the user name
    from it (`secret`, `uid:gid:home`).  Raises MalformedValue.
    """
    try:
        return PARSERS[service](key, raw)
    except BadValue as bad:
        raise MalformedValue(service, key, str(bad), table) from None


def _quote_target(target: str) -> str:
    if any(c in target for c in ',"\\'):
        return '"' + target.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return target


def render(value: Value) -> str:
    """A value as one line of text, in the form its service's parser reads.

    What `postillion table lookup` and `table dump` print: userinfo in the
    2012 four-field form (it names the user), credentials as `user:secret`,
    alias and mailaddrmap as comma lists.  Parsing the result with the same
    service gives the same value back.
    """
    if isinstance(value, ExpandList):
        return ", ".join(_quote_target(t) for t in value.targets)
    if isinstance(value, Userinfo):
        return f"{value.username}:{value.uid}:{value.gid}:{value.home}"
    if isinstance(value, Credentials):
        return f"{value.username}:{value.secret}"
    if isinstance(value, Netaddr):
        return str(value.network)
    if isinstance(value, Source):
        return str(value.address)
    if isinstance(value, Mailaddrmap):
        return ", ".join(str(p) for p in value.patterns)
    if isinstance(value, Regex):
        return value.pattern.pattern
    if isinstance(value, (Domain, Addrname)):
        return value.name
    if isinstance(value, Relayhost):
        return value.url
    if isinstance(value, String):
        return value.value
    return str(value)       # Mailaddr
