"""Syntax of SMTP paths and parameters: pure functions, no state.

Part of `protocol.py`'s machine (docs/smtp.md, Addresses and parameters).
The parameter checks read the machine's limits and features, so they take
it as their first argument.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from postillion.errors import Reply
from postillion.smtp import idn
from postillion.smtp._events import (
    Path,
)
from postillion.smtp._replies import (
    PARAMETER_SYNTAX,
    TOO_BIG,
)

if TYPE_CHECKING:
    from postillion.smtp.protocol import ServerProtocol

# --------------------------------------------------------------------------
# Syntax helpers (docs/smtp.md, Addresses and parameters); pure functions, no state

_HTTP_METHODS: Final = (
    b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"CONNECT ",
    b"OPTIONS ", b"TRACE ", b"PATCH ",
)
_CONTROL: Final = re.compile(rb"[\x00-\x1f\x7f]")
_ATOM: Final = r"[A-Za-z0-9!#$%&'*/?^`{|}~+=_-]+"
_DOT_ATOM: Final = re.compile(rf"{_ATOM}(?:\.{_ATOM})*", re.ASCII)
_LABELS: Final = re.compile(r"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*", re.ASCII)
_IPV6_TEXT: Final = re.compile(r"[0-9A-Fa-f:.]+", re.ASCII)
_KEYWORD: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*", re.ASCII)
_VALUE: Final = re.compile(r"[\x21-\x3c\x3e-\x7e]+", re.ASCII)
#: A line start with a dot that is not a lone "." line: the stuffing to undo.
_STUFFED: Final = re.compile(rb"\n\.(?!\r\n)")


def _printable(line: bytes, limit: int = 100) -> str:
    """An escaped, truncated copy of a client line, safe for any log."""
    text = "".join(chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in line[:limit])
    return text + "..." if len(line) > limit else text


def _is_literal(text: str) -> bool:
    """`[1.2.3.4]` or `[IPv6:...]` (RFC 5321 §4.1.3); general literals refused."""
    if not (text.startswith("[") and text.endswith("]")):
        return False
    inner = text[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            # ipaddress also accepts a "%scope" suffix; an address literal may not.
            return bool(_IPV6_TEXT.fullmatch(inner[5:])) and bool(ipaddress.IPv6Address(inner[5:]))
        ipaddress.IPv4Address(inner)
        return True
    except ValueError:
        return False


def _is_domain(text: str) -> bool:
    """alnum/`-`/`_` labels, no empty label, no trailing dot, <= 255 octets."""
    return len(text) <= 255 and (bool(_LABELS.fullmatch(text)) or _is_literal(text))


class _BadAddress(Exception):
    """Internal: a path failed §6.3; `non_ascii` picks 5.6.7 over syntax."""

    def __init__(self, non_ascii: bool = False) -> None:
        super().__init__()
        self.non_ascii = non_ascii


def _parse_path(inner: str, utf8: bool = False) -> Path | None:
    """The text between `<` and `>` -> Path, or None for `<>`.

    Source routes (`@a,@b:`) are checked and dropped (RFC 5321 §C).  Quoted
    local parts are refused: they are where parsers disagree, and no real
    sender needs them.  `%` and `!` are plain local-part characters; they
    never route (docs/smtp.md).  A domain with an `xn--` label that is no valid
    A-label, or a UTF-8 domain that cannot be written in A-labels, is
    refused like any malformed domain (`idn.py`).
    """
    if len(inner) + 2 > 256:
        raise _BadAddress
    if not inner:
        return None
    if not inner.isascii():
        try:
            inner.encode("utf-8")  # surrogate escapes = bytes that were not UTF-8
        except UnicodeEncodeError:
            raise _BadAddress from None
        if not utf8:
            raise _BadAddress(non_ascii=True)
        if not inner.isprintable() or len(inner.encode("utf-8")) + 2 > 256:
            raise _BadAddress
        # RFC 6531: UTF-8 is allowed wherever atext and sub-domain letters
        # are; check the shape with each non-ASCII character as a letter.
        shape = "".join(ch if ch.isascii() else "a" for ch in inner)
        parsed = _parse_path(shape)
        if parsed is None:
            raise _BadAddress
        # Same positions in both strings: cut the real parts where the shape's are.
        d, n = len(parsed.domain), len(parsed.local)
        end = len(inner) - d - (1 if d else 0)
        domain = inner[len(inner) - d :] if d else ""
        if not domain.isascii():
            # The spelling lookups and the queue will use must exist.
            written = idn.to_ascii(domain)
            if written is None or not _is_domain(written) or not idn.a_labels_valid(written):
                raise _BadAddress
        return Path(inner[end - n : end], domain)
    if inner.startswith("@"):
        route, colon, inner = inner.partition(":")
        if not colon or not all(hop[:1] == "@" and _is_domain(hop[1:]) for hop in route.split(",")):
            raise _BadAddress
    local, at, domain = inner.rpartition("@")
    if not at:
        local, domain = inner, ""
    elif not _is_domain(domain) or not idn.a_labels_valid(domain):
        raise _BadAddress
    if len(local) > 64 or not _DOT_ATOM.fullmatch(local):
        raise _BadAddress
    return Path(local, domain)


def _parse_params(text: str) -> dict[str, str]:
    """`KEY[=VALUE] ...` (RFC 5321 §4.1.2 esmtp-param) -> {KEY: value}.

    Malformed or repeated -> 501 5.5.4 (docs/smtp.md); knowing the keyword is
    the verb's business.
    """
    params: dict[str, str] = {}
    for word in text.split(" "):
        if not word:
            continue
        key, eq, value = word.partition("=")
        if not _KEYWORD.fullmatch(key) or (eq and not _VALUE.fullmatch(value)):
            raise _Refusal(PARAMETER_SYNTAX)
        key = key.upper()
        if key in params:
            raise _Refusal(Reply(501, "5.5.4", f"Duplicate parameter: {key}"))
        params[key] = value
    return params


_XTEXT_HEX: Final = re.compile(r"\+([0-9A-F]{2})")


def _xtext(value: str, limit: int, what: str) -> str:
    """Decode RFC 3461 xtext (`+HH` escapes); printable ASCII only, <= limit.

    What comes out may reach the queue, a bounce and a log line: a CR, LF or
    NUL written as `+0D` is refused here, never stored.
    """
    if not all(_XTEXT_HEX.match(value, i) for i, ch in enumerate(value) if ch == "+"):
        raise _Refusal(Reply(501, "5.5.4", f"Invalid parameter: {what}"))
    decoded = _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), value)
    if not decoded or len(decoded) > limit or not all(0x20 <= ord(c) < 0x7F for c in decoded):
        raise _Refusal(Reply(501, "5.5.4", f"Invalid parameter: {what}"))
    return decoded


def _param_ret(proto: ServerProtocol, value: str) -> str:
    """RFC 3461 §4.3: FULL or HDRS."""
    ret = value.upper()
    if ret not in ("FULL", "HDRS"):
        raise _Refusal(Reply(501, "5.5.4", "Invalid parameter: RET"))
    return ret


def _param_envid(proto: ServerProtocol, value: str) -> str:
    """RFC 3461 §4.4: xtext, at most 100 characters once decoded."""
    return _xtext(value, 100, "ENVID")


def _param_auth(proto: ServerProtocol, value: str) -> str:
    """RFC 4954 §5: `AUTH=<mailbox>`; accepted and ignored."""
    return value


def _param_flag(name: str) -> _ParamCheck:
    def check(proto: ServerProtocol, value: str) -> str:
        if value:
            raise _Refusal(Reply(501, "5.5.4", f"Invalid parameter: {name}"))
        return ""
    return check


_NOTIFY: Final = frozenset({"SUCCESS", "FAILURE", "DELAY"})


def _param_notify(proto: ServerProtocol, value: str) -> str:
    """RFC 3461 §4.1: NEVER, or a comma list of SUCCESS, FAILURE, DELAY."""
    items = value.upper().split(",")
    if items == ["NEVER"] or (set(items) <= _NOTIFY and len(set(items)) == len(items)):
        return ",".join(items)
    raise _Refusal(Reply(501, "5.5.4", "Invalid parameter: NOTIFY"))


def _param_orcpt(proto: ServerProtocol, value: str) -> str:
    """RFC 3461 §4.2: `addr-type;xtext`, at most 500 characters; kept decoded."""
    kind, semi, address = value.partition(";")
    if not semi or not _KEYWORD.fullmatch(kind) or len(value) > 500:
        raise _Refusal(Reply(501, "5.5.4", "Invalid parameter: ORCPT"))
    return f"{kind.lower()};{_xtext(address, 500, 'ORCPT')}"


def _param_size(proto: ServerProtocol, value: str) -> str:
    """RFC 1870: declared size; above max_message_size refused before DATA."""
    if not value.isdigit() or len(value) > 20:
        raise _Refusal(Reply(501, "5.5.4", "Invalid parameter: SIZE"))
    if int(value) > proto.limits.max_message_size:
        raise _Refusal(TOO_BIG, counts=False)
    return value


_ParamCheck = Callable[["ServerProtocol", str], str]


def _param_body(proto: ServerProtocol, value: str) -> str:
    """RFC 6152: 7BIT or 8BITMIME (we store 8-bit as is); BINARYMIME not offered."""
    body = value.upper()
    if body not in ("7BIT", "8BITMIME"):
        raise _Refusal(Reply(501, "5.5.4", "Invalid parameter: BODY"))
    return body


#: Known MAIL parameters -> (Features flag that offers it or None, validator
#: returning the value to hand on).  Not offered = unknown: 555 5.5.4.
MAIL_PARAMETERS: Final[dict[str, tuple[str | None, _ParamCheck]]] = {
    "SIZE": (None, _param_size),
    "BODY": (None, _param_body),
    "AUTH": ("auth", _param_auth),
    "SMTPUTF8": ("smtputf8", _param_flag("SMTPUTF8")),
    "RET": ("dsn", _param_ret),
    "ENVID": ("dsn", _param_envid),
}
#: Known RCPT parameters, likewise.
RCPT_PARAMETERS: Final[dict[str, tuple[str | None, _ParamCheck]]] = {
    "NOTIFY": ("dsn", _param_notify),
    "ORCPT": ("dsn", _param_orcpt),
}


class _Refusal(Exception):
    """Internal peer error: the line is refused with `reply`, state unchanged.

    `counts` says whether it counts toward max_failed_commands: protocol
    errors do; limit refusals (452, 552) a correct client can hit do not.
    """

    def __init__(self, reply: Reply, counts: bool = True, fatal: bool = False) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.counts = counts
        self.fatal = fatal      # the rest of the stream cannot be parsed: close
