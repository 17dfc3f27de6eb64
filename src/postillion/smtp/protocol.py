"""The SMTP server protocol as a sans-IO state machine (docs/smtp.md).

Bytes go in with `receive_data`, events come out of `next_event`, replies go
in with `send` and come out as bytes from `data_to_send`.  Nothing here reads
a socket, sleeps or looks at a clock, so every byte sequence a client can send
can be replayed in a unit test or a fuzzer; `smtp/session.py` binds the
machine to sockets, rules, lookups and the queue (h11's shape, docs/architecture.md).

The session drives it like this::

    proto = ServerProtocol(hostname, peer, limits)
    proto.send_banner()
    while True:
        write(proto.data_to_send())
        event = proto.next_event()
        if event is NEED_DATA:
            proto.receive_data(await read())     # b"" at EOF
        elif isinstance(event, ConnectionClosed):
            break
        elif event.reply_owed:
            proto.send(await decide(event))      # 250, 354, 550, 421 ...
        else:
            log(event)                           # DataChunk: spool it

What the machine decides alone, and what it leaves to the session:

* It answers by itself everything that needs no table or queue: syntax and
  sequence errors, unknown and unimplemented verbs, parameters, the limits of
  §6.3 it can count (line lengths, message size, RCPT per transaction, mails
  per session, failed commands in a row), RSET, NOOP, HELP and QUIT.  Each
  such refusal is reported as a `CommandRejected` event for the log.
* It runs the AUTH challenge/response and the BDAT chunk reading itself,
  and hands out STARTTLS as an event: the session answers 220, does the
  handshake, then calls `tls_started()`.  What the listener offers
  (STARTTLS, AUTH, DSN, SMTPUTF8, CHUNKING) comes in as `Features`.
* It hands the session every decision that needs the world (HELO policy,
  sender and recipient rules, credentials, queueing) as an event that owes a reply; until
  the session calls `send`, no further byte is parsed, so replies always come
  out in command order however deep the client pipelines (RFC 2920).

Every buffer is bounded: while looking for the end of a command line the
machine never holds `max_line` bytes without refusing the line, and while
reading a message never `max_data_line` bytes of one line; a caller that reads
only when told `NEED_DATA` therefore holds at most one read more than that.
Message content leaves in large chunks found with `bytes.find` over the
buffer, never line by line in Python (docs/architecture.md, "Performance shape").
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar, Final

from postillion.errors import Reply
from postillion.smtp import idn

__all__ = [
    "NEED_DATA",
    "Auth",
    "BdatEnd",
    "Features",
    "StartTls",
    "TRANSITIONS",
    "VERBS",
    "CommandRejected",
    "ConnectionClosed",
    "DataChunk",
    "DataEnd",
    "DataStart",
    "Event",
    "Helo",
    "MailFrom",
    "NeedData",
    "Path",
    "ProtocolLimits",
    "Quit",
    "RcptTo",
    "Reset",
    "ServerProtocol",
    "State",
    "START_DATA",
]


# --------------------------------------------------------------------------
# Limits


@dataclass(frozen=True, slots=True)
class ProtocolLimits:
    """The §6.3 limits the machine enforces itself; the session fills it from
    the config `Limits` (same field names, same defaults).

    Lengths count the raw octets on the wire, line end included; the message
    size counts octets after dot-unstuffing and line-end normalisation, i.e.
    what would be stored.
    """

    max_line: int = 4096                    # command line incl. CRLF -> 500 5.5.2, close
    max_data_line: int = 65535              # message line incl. CRLF -> 500 5.5.2, close
    max_message_size: int = 35 * 1024 * 1024  # after unstuffing -> DataEnd(too_big=True)
    max_rcpt: int = 1000                    # per transaction -> 452 4.5.3
    max_mails: int = 100                    # per session -> 452 4.5.3 at MAIL
    max_failed_commands: int = 10           # in a row -> 421 4.7.0, close
    max_auth_line: int = 12288              # AUTH response line incl. CRLF -> 500 5.5.2, close
    max_failed_auth: int = 3                # 535 per session -> 421 4.7.0, close
    max_rejected_rcpt: int = 50             # RCPT refused 5xx per session -> 421 4.7.0, close

    def __post_init__(self) -> None:
        # ".\r\n" must fit in a data line and "QUIT\r\n" in a command line,
        # or no client could ever end a message or a session.
        if self.max_line < 6 or self.max_data_line < 3:
            raise ValueError("max_line must be >= 6 and max_data_line >= 3")
        if min(self.max_message_size, self.max_rcpt, self.max_mails, self.max_failed_commands,
               self.max_failed_auth, self.max_rejected_rcpt) < 1 or self.max_auth_line < 6:
            raise ValueError("protocol limits must be positive")


@dataclass(frozen=True, slots=True)
class Features:
    """What the listener offers (EHLO keywords, docs/smtp.md), fixed per session.

    Each flag enables its EHLO keyword together with the verb or parameters
    behind it; a verb not offered answers 502 5.5.1, a parameter 555 5.5.4.
    """

    starttls: bool = False        # `tls`/`tls-require`: STARTTLS until TLS is up
    tls_required: bool = False    # `tls-require`: MAIL -> 530 5.7.0 before STARTTLS
    auth: bool = False            # `auth`/`auth-optional`: AUTH PLAIN LOGIN (on TLS)
    auth_required: bool = False   # `auth`: MAIL -> 530 5.7.0 before AUTH
    insecure_auth: bool = False   # `insecure-auth`: AUTH offered without TLS
    dsn: bool = False             # DSN: RET/ENVID at MAIL, NOTIFY/ORCPT at RCPT
    smtputf8: bool = False        # SMTPUTF8: UTF-8 addresses with the MAIL parameter
    chunking: bool = False        # CHUNKING: BDAT


#: What a session on a listener with every extension gets (`no-dsn` aside).
ALL_EXTENSIONS: Final = Features(dsn=True, smtputf8=True, chunking=True)


# --------------------------------------------------------------------------
# States and events


class State(enum.Enum):
    """Where the SMTP dialogue stands (RFC 5321 §4.1.4 ordering).

    While a reply is owed (`ServerProtocol.pending`) the state is the one
    *before* the command; it moves only when the reply is sent, and only if
    that reply accepts the command.
    """

    CONNECTED = "connected"   # banner sent, no HELO/EHLO accepted yet
    READY = "ready"           # greeted, no transaction
    MAIL = "mail"             # sender accepted, no recipient yet
    RCPT = "rcpt"             # at least one recipient accepted
    DATA = "data"             # 354 sent: bytes are message content
    BDAT = "bdat"             # a non-LAST BDAT chunk accepted: more chunks (or RSET)
    AUTH = "auth"             # 334 sent: the next line is a SASL response
    TLS = "tls"               # 220 to STARTTLS sent: waiting for the handshake
    CLOSED = "closed"         # QUIT, EOF, 421 or a fatal protocol error


class NeedData(enum.Enum):
    """h11's sentinel: `next_event` needs more bytes before it can answer."""

    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA


@dataclass(frozen=True, slots=True)
class Event:
    """Something the client did.  `reply_owed` events wait for `send`."""

    reply_owed: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class Path:
    """A mailbox from a MAIL or RCPT path, source route already stripped.

    `domain` is "" when the client gave none (`RCPT TO:<postmaster>`); the
    session supplies its own hostname then (docs/smtp.md).  Neither part is
    case-folded: the local part is case-sensitive to the final recipient.
    """

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}" if self.domain else self.local


@dataclass(frozen=True, slots=True)
class Helo(Event):
    """HELO or EHLO with a syntactically valid domain or address literal.

    Reply owed; the session normally sends `proto.helo_reply(event)`.  An
    accepted repeated HELO/EHLO also ends any open transaction (RFC 5321
    §4.1.4), so the session must drop its transaction when it accepts one.
    """

    reply_owed: ClassVar[bool] = True
    domain: str
    extended: bool


@dataclass(frozen=True, slots=True)
class MailFrom(Event):
    """MAIL FROM with a valid path and known, valid parameters.

    `sender` is None for the null reverse-path `<>` (bounces).  `params` has
    upper-cased keys; a keyword without value maps to "".  SIZE was already
    checked against max_message_size and BODY is 7BIT or 8BITMIME (upper).
    """

    reply_owed: ClassVar[bool] = True
    sender: Path | None
    params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class RcptTo(Event):
    """RCPT TO with a valid path, inside max_rcpt.  Reply owed."""

    reply_owed: ClassVar[bool] = True
    rcpt: Path
    params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class DataStart(Event):
    """DATA after at least one accepted RCPT.

    Reply owed: `START_DATA` (354) makes the following bytes message content;
    any 4xx/5xx refuses it and the following bytes are read as commands.
    """

    reply_owed: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class DataChunk(Event):
    """A piece of message content, ready to spool.

    Every line end CRLF, bare CR turned into a space.  After DATA:
    dot-unstuffed, never the terminating "." line, always ending at a line
    end, and stopping before max_message_size octets are exceeded (whole
    lines only).  After BDAT: the chunk's octets as sent (no stuffing to
    undo), cut anywhere, none once max_message_size is exceeded.
    """

    data: bytes


@dataclass(frozen=True, slots=True)
class DataEnd(Event):
    """The CRLF "." CRLF terminator was read.

    Reply owed: 250 once the message is durable, 552 5.3.4 if `too_big`, or
    a 4xx.  `size` counts every stored octet, including those dropped past
    max_message_size.  Whatever the reply, the transaction is over after it.
    """

    reply_owed: ClassVar[bool] = True
    size: int
    too_big: bool


@dataclass(frozen=True, slots=True)
class StartTls(Event):
    """STARTTLS, valid here (after EHLO, outside a transaction, not yet TLS).

    Reply owed: `READY_TLS` (220) makes the machine discard every byte it
    holds (plaintext pipelined after the command must never be read as if
    it came over TLS) and wait in State.TLS; the session then does the
    handshake and calls `tls_started()`, or closes if it fails.
    """

    reply_owed: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Auth(Event):
    """AUTH PLAIN or LOGIN, all responses read and decoded (RFC 4954).

    Reply owed: `AUTH_OK` (235) authenticates the session as `username`;
    535 5.7.8 counts toward max_failed_auth (421 and close at the limit);
    454 4.7.0 (credentials lookup failed) counts nothing.  `authzid` is the
    PLAIN authorization identity ("" if none): the session must refuse one
    that differs from `username` (RFC 4616 §2).  The password never appears in
    repr, so the event can be logged safely.
    """

    reply_owed: ClassVar[bool] = True
    mechanism: str
    username: str
    password: str = field(repr=False)
    authzid: str = ""


@dataclass(frozen=True, slots=True)
class BdatEnd(Event):
    """All `chunk` octets of one BDAT were read (RFC 3030).

    Reply owed: for a non-LAST chunk `250 2.0.0 <n> octets received`; for the
    LAST one, 250 once the message is durable.  `size` counts the stored
    octets of the message so far; `too_big` means content was dropped: the
    session answers 552 5.3.4.  A 4xx/5xx to any chunk ends the transaction,
    and the chunks the client still sends are read and dropped (503).
    """

    reply_owed: ClassVar[bool] = True
    chunk: int
    size: int
    last: bool
    too_big: bool


@dataclass(frozen=True, slots=True)
class Reset(Event):
    """RSET: the machine already answered `250 2.0.0 Reset state`."""


@dataclass(frozen=True, slots=True)
class Quit(Event):
    """QUIT: the machine already answered `221 2.0.0 Bye`; close after flushing."""


@dataclass(frozen=True, slots=True)
class CommandRejected(Event):
    """The machine refused a line by itself (already answered with `reply`).

    For the log only.  `command` is an escaped (non-printables as \\xNN),
    truncated copy of the line, so it is safe to write anywhere.
    """

    command: str
    reply: Reply


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The dialogue is over: EOF, QUIT, a 421, or a fatal protocol error.

    Returned again by every later `next_event`; `should_close` is True.
    """

    reason: str


# --------------------------------------------------------------------------
# Replies the machine sends by itself (docs/smtp.md, Replies)

START_DATA: Final = Reply(354, "", 'Enter mail, end with "." on a line by itself')
READY_TLS: Final = Reply(220, "2.0.0", "Ready to start TLS")
AUTH_OK: Final = Reply(235, "2.0.0", "Authentication succeeded")

OK: Final = Reply(250, "2.0.0", "Ok")
RESET_OK: Final = Reply(250, "2.0.0", "Reset state")
BYE: Final = Reply(221, "2.0.0", "Bye")
HELP: Final = Reply(214, "2.0.0", "End of HELP info")
UNRECOGNIZED: Final = Reply(500, "5.5.1", "Invalid command: Command unrecognized")
LINE_TOO_LONG: Final = Reply(500, "5.5.2", "Line too long")
CONTROL_CHARACTER: Final = Reply(501, "5.5.4", "Invalid command: control character in command")
NOT_IMPLEMENTED: Final = Reply(502, "5.5.1", "Command not implemented")
TOO_MANY_FAILURES: Final = Reply(421, "4.7.0", "Too many failed commands, closing connection")
SENDER_SYNTAX: Final = Reply(553, "5.1.7", "Sender address syntax error")
RECIPIENT_SYNTAX: Final = Reply(501, "5.1.3", "Recipient address syntax error")
NON_ASCII_ADDRESS: Final = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
TOO_MANY_RECIPIENTS: Final = Reply(452, "4.5.3", "Too many recipients")
TOO_MANY_MAILS: Final = Reply(452, "4.5.3", "Too many messages sent")
TOO_BIG: Final = Reply(552, "5.3.4", "Message too big for system")
UNSUPPORTED_PARAMETER: Final = Reply(555, "5.5.4", "Unsupported parameter")
PARAMETER_SYNTAX: Final = Reply(501, "5.5.4", "Syntax error in parameters")
TLS_FIRST: Final = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
AUTH_FIRST: Final = Reply(530, "5.7.0", "Authentication required")
ENCRYPTION_REQUIRED: Final = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
UNKNOWN_MECHANISM: Final = Reply(504, "5.5.4", "Unrecognized authentication type")
BAD_BASE64: Final = Reply(501, "5.5.2", "Invalid base64 data")
AUTH_CANCELLED: Final = Reply(501, "5.0.0", "Authentication cancelled")
TOO_MANY_AUTH_FAILURES: Final = Reply(421, "4.7.0", "Too many failed authentication attempts, closing connection")
TOO_MANY_REJECTED_RCPT: Final = Reply(421, "4.7.0", "Too many rejected recipients, closing connection")
BDAT_SYNTAX: Final = Reply(501, "5.5.4", "Syntax: BDAT size [LAST]")
#: The code that accepts each reply-owed event; any other 2xx/3xx is misuse.
ACCEPT_CODES: Final[dict[str, int]] = {"DataStart": 354, "StartTls": 220, "Auth": 235}


def _syntax(usage: str) -> Reply:
    return Reply(501, "5.5.4", f"Syntax: {usage}")


def _sequence(why: str) -> Reply:
    return Reply(503, "5.5.1", f"Bad sequence of commands: {why}")


# --------------------------------------------------------------------------
# The transitions table

#: (state, accepted event) -> next state.  Reply-owed events move only when
#: the session's reply accepts them (2xx, or 354 for DataStart); Reset and
#: Quit move at once.  A reply-owed event whose (state, type) is missing here
#: is a sequence error: 503 5.5.1, state unchanged.  A refused DataEnd still
#: ends the transaction (READY); any 421 goes to CLOSED.
TRANSITIONS: Final[dict[tuple[State, type[Event]], State]] = {
    (State.CONNECTED, Helo): State.READY,
    (State.READY, Helo): State.READY,
    (State.MAIL, Helo): State.READY,
    (State.RCPT, Helo): State.READY,
    (State.BDAT, Helo): State.READY,
    (State.READY, StartTls): State.TLS,
    (State.READY, Auth): State.READY,
    (State.RCPT, BdatEnd): State.BDAT,    # READY instead after a LAST chunk
    (State.BDAT, BdatEnd): State.BDAT,
    (State.READY, MailFrom): State.MAIL,
    (State.MAIL, RcptTo): State.RCPT,
    (State.RCPT, RcptTo): State.RCPT,
    (State.RCPT, DataStart): State.DATA,
    (State.DATA, DataEnd): State.READY,
    (State.CONNECTED, Reset): State.CONNECTED,
    (State.READY, Reset): State.READY,
    (State.MAIL, Reset): State.READY,
    (State.RCPT, Reset): State.READY,
    (State.BDAT, Reset): State.READY,
    (State.CONNECTED, Quit): State.CLOSED,
    (State.READY, Quit): State.CLOSED,
    (State.MAIL, Quit): State.CLOSED,
    (State.RCPT, Quit): State.CLOSED,
    (State.BDAT, Quit): State.CLOSED,
}

#: Why a reply-owed command is out of sequence, by the state it came in.
_OUT_OF_SEQUENCE: Final[dict[type[Event], Callable[[State], Reply]]] = {
    MailFrom: lambda s: _sequence(
        "send HELO/EHLO first" if s is State.CONNECTED else "sender already specified"
    ),
    RcptTo: lambda s: _sequence("RCPT after BDAT" if s is State.BDAT else "need MAIL before RCPT"),
    DataStart: lambda s: _sequence("DATA after BDAT" if s is State.BDAT else "need RCPT before DATA"),
    BdatEnd: lambda s: _sequence("need RCPT before BDAT"),
    StartTls: lambda s: _sequence(
        "send EHLO first" if s is State.CONNECTED else "STARTTLS not allowed in a transaction"),
    Auth: lambda s: _sequence(
        "send EHLO first" if s is State.CONNECTED else "AUTH not allowed in a transaction"),
}


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


# --------------------------------------------------------------------------
# The machine


class ServerProtocol:
    """One SMTP server connection, without I/O.

    Public attributes: `state` (State), `should_close` (True once the
    connection must be closed after flushing `data_to_send`), `pending` (the
    event whose reply is owed, or None), `hostname`, `peer`, `limits`,
    `features`, `tls` (the connection is encrypted: SMTPS from the start, or
    after `tls_started`), `authenticated` (the AUTH user name, or None) and
    `smtputf8` (the open transaction's MAIL carried SMTPUTF8).
    """

    def __init__(self, hostname: str, peer: str, limits: ProtocolLimits = ProtocolLimits(),
                 features: Features = Features(), tls: bool = False) -> None:
        self.hostname = hostname
        self.peer = peer                  # client IP as text, for "Hello HELO [IP]"
        self.limits = limits
        self.features = features
        self.tls = tls
        self.authenticated: str | None = None
        self.smtputf8 = False
        self.state = State.CONNECTED
        self.should_close = False
        self.pending: Event | None = None
        self._buf = bytearray()           # unparsed input
        self._scan = 0                    # _buf[:_scan] holds no LF: resume searches here
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._eof = False
        self._closed: ConnectionClosed | None = None
        self._bannered = False
        self._failed = 0                  # auto-refused commands in a row
        self._rcpts = 0                   # accepted RCPT in this transaction
        self._mails = 0                   # messages accepted in this session
        self._line_crlf = True            # did the last command line end in CRLF?
        # DATA reading (valid in State.DATA)
        self._prev_crlf = True            # did the last content line end in CRLF?
        self._size = 0                    # stored octets so far, dropped ones included
        self._done = False                # terminator consumed, DataEnd not yet out
        self._failed_auth = 0             # 535 answers in this session
        self._rejected_rcpt = 0           # RCPT the session refused with 5xx
        self._auth_mech = ""              # AUTH dialogue (State.AUTH): mechanism,
        self._auth_user: str | None = None  # LOGIN user name once given
        # BDAT chunk reading: octets still to read, the chunk's size and LAST,
        # and the refusal to send at its end (None: hand out a BdatEnd).
        self._bdat_left = -1              # -1: not reading a chunk
        self._bdat_chunk = 0
        self._bdat_last = False
        self._bdat_refusal: Reply | None = None
        self._bdat_cr = False             # a chunk ended in CR: its LF may follow
        self._phases = 0                  # message-content phases begun

    @property
    def buffered(self) -> int:
        """Octets received but not yet parsed: a command or data line in
        progress.  The session times a line from its first byte with it."""
        return len(self._buf)

    @property
    def content_phase(self) -> int | None:
        """Which message-content phase the client is in (a serial number),
        or None outside one.

        A phase begins when 354 accepts DATA, or with a BDAT chunk outside
        State.BDAT (a transaction's first, or one read to be dropped), and
        lasts until the end of data, the LAST chunk or the transaction's end;
        the BDAT lines between a transaction's chunks are inside it.
        The session times a phase as a whole (`Limits.min_data_rate`): whole
        lines trickled one by one must not keep a session for ever.
        """
        if self.state is State.DATA or self.state is State.BDAT or self._bdat_left >= 0:
            return self._phases
        return None

    # -- the h11-style interface ------------------------------------------

    def send_banner(self) -> None:
        """Queue the greeting `220 HOSTNAME ESMTP Postillion` (docs/smtp.md).

        A session refusing the connection (too many sessions) sends a 421
        with `send` instead.  Raises RuntimeError if called twice or late.
        """
        if self._bannered or self.state is not State.CONNECTED or self._closed is not None:
            raise RuntimeError("the banner is sent once, first")
        self._bannered = True
        self._queue(Reply(220, "", f"{self.hostname} ESMTP Postillion"))

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the client; b"" means the client closed.

        Bytes arriving after the connection was closed are dropped.  Raises
        RuntimeError for data after EOF.  Read only when `next_event` says
        NEED_DATA: that is what keeps the buffer bounded.
        """
        if not data:
            self._eof = True
        elif self._eof:
            raise RuntimeError("received data after EOF")
        elif self._closed is None and self.state is not State.TLS:
            self._buf += data

    def next_event(self) -> Event | NeedData:
        """The next thing the client did, or NEED_DATA.

        Returns an Event (reply owed if `event.reply_owed`), NEED_DATA when
        more bytes are needed, or, once closed, the same ConnectionClosed
        forever.  Raises RuntimeError while a reply is owed: answer `pending`
        first.  Any other exception is a bug.
        """
        if self.pending is not None:
            raise RuntimeError(f"a reply is owed to {self.pending!r}")
        if self.state is State.TLS and self._closed is None:
            raise RuntimeError("waiting for the TLS handshake: call tls_started()")
        if not self._events:
            self._advance()
        if self._events:
            event = self._events.popleft()
            if event.reply_owed:
                self.pending = event
            return event
        if self._closed is not None:
            return self._closed
        return NEED_DATA

    def send(self, reply: Reply) -> None:
        """Answer the pending event; the state moves on `reply.code`.

        2xx accepts (354, and only 354, accepts DataStart); 4xx/5xx refuses
        and leaves the state as it was, except that a refused DataEnd still
        ends the transaction; 421 closes the connection.  With nothing
        pending only a 421 may be sent (timeout, shutdown).  Raises
        RuntimeError on misuse, leaving everything as it was.
        """
        if self._closed is not None:
            raise RuntimeError("the connection is closed")
        event = self.pending
        if event is None:
            if reply.code != 421:
                raise RuntimeError("no reply is owed; only a 421 may be sent unasked")
            self._queue(reply)
            self._close(f"server sent {reply.code}")
            return
        if reply.code < 400 and reply.code != ACCEPT_CODES.get(type(event).__name__, 250):
            raise RuntimeError(f"{reply.code} cannot answer {type(event).__name__}")
        self.pending = None
        self._queue(reply)
        if reply.code == 421:
            self._close(f"server sent {reply.code}")
        elif reply.code < 400:
            self._accept(event)
        elif isinstance(event, (DataEnd, BdatEnd)):
            self._end_transaction()
        elif isinstance(event, Auth) and reply.code == 535:
            self._failed_auth += 1
            if self._failed_auth >= self.limits.max_failed_auth:
                self._queue(TOO_MANY_AUTH_FAILURES)
                self._close("too many failed authentications")
        elif isinstance(event, RcptTo) and reply.code >= 500:
            # A client probing for valid addresses (a dictionary attack)
            # is cut off; table outages (4xx) do not count.
            self._rejected_rcpt += 1
            if self._rejected_rcpt >= self.limits.max_rejected_rcpt:
                self._queue(TOO_MANY_REJECTED_RCPT)
                self._close("too many rejected recipients")

    def tls_started(self) -> None:
        """The TLS handshake after `220 Ready to start TLS` succeeded.

        RFC 3207 §4.2: everything learnt before is forgotten -- the greeting,
        any transaction, AUTH -- so the client must EHLO again, and that EHLO
        no longer offers STARTTLS.  Raises RuntimeError unless in State.TLS.
        """
        if self.state is not State.TLS or self._closed is not None:
            raise RuntimeError("tls_started() only after 220 to STARTTLS")
        self.tls = True
        self.state = State.CONNECTED
        self.authenticated = None
        self.smtputf8 = False
        self._rcpts = 0
        self._buf.clear()
        self._scan = 0

    def helo_reply(self, event: Helo) -> Reply:
        """The standard 250 to HELO/EHLO; EHLO gets the keyword lines.

        No enhanced code: RFC 2034 exempts the HELO/EHLO reply.
        """
        text = f"{self.hostname} Hello {event.domain} [{self.peer}], pleased to meet you"
        return Reply(250, "", text, self.ehlo_keywords() if event.extended else ())

    def data_to_send(self) -> bytes:
        """Drain the replies queued so far, in command order."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    # -- EHLO ---------------------------------------------------------------

    def ehlo_keywords(self) -> tuple[str, ...]:
        """The EHLO keyword lines, HELP last (docs/smtp.md order), as offered now.

        STARTTLS only until TLS is up; AUTH only on TLS (or `insecure-auth`)
        and until the session authenticated.
        """
        f = self.features
        words = ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", f"SIZE {self.limits.max_message_size}"]
        if f.dsn:
            words.append("DSN")
        if f.smtputf8:
            words.append("SMTPUTF8")
        if f.chunking:
            words.append("CHUNKING")
        if f.starttls and not self.tls:
            words.append("STARTTLS")
        if self._auth_offered():
            words.append("AUTH PLAIN LOGIN")
        words.append("HELP")
        return tuple(words)

    def _auth_offered(self) -> bool:
        f = self.features
        return f.auth and (self.tls or f.insecure_auth) and self.authenticated is None

    # -- plumbing -------------------------------------------------------------

    def _queue(self, reply: Reply) -> None:
        self._out.append(reply.to_bytes())

    def _close(self, reason: str) -> None:
        """Enter CLOSED: nothing more is parsed, the session closes after flushing."""
        self.state = State.CLOSED
        self.should_close = True
        self.pending = None
        self._closed = ConnectionClosed(reason)
        self._events.append(self._closed)
        self._buf.clear()
        self._scan = 0

    def _consume(self, n: int) -> None:
        """Drop n parsed bytes; the no-LF mark no longer applies to what is left."""
        del self._buf[:n]
        self._scan = 0

    def _accept(self, event: Event) -> None:
        """The session accepted `event`: move along TRANSITIONS and count."""
        self.state = TRANSITIONS[(self.state, type(event))]
        match event:
            case Helo():
                self._rcpts = 0
                self.smtputf8 = False
            case MailFrom():
                self._rcpts = 0
                self.smtputf8 = "SMTPUTF8" in event.params
            case StartTls():
                # RFC 3207 §5: plaintext sent after STARTTLS is never answered.
                self._buf.clear()
                self._scan = 0
            case Auth():
                self.authenticated = event.username
            case RcptTo():
                self._rcpts += 1
            case DataStart():
                self._prev_crlf = self._line_crlf  # DATA\n.\r\n is no terminator
                self._size = 0
                self._done = False
                self._phases += 1
            case DataEnd():
                self._mails += 1
                self._end_transaction()
            case BdatEnd(last=True):
                self._mails += 1
                self._end_transaction()

    def _end_transaction(self) -> None:
        self.state = State.READY
        self._rcpts = 0
        self.smtputf8 = False

    def _advance(self) -> None:
        """Parse until an event is ready, more bytes are needed, or closed."""
        while not self._events and self._closed is None and self.state is not State.TLS:
            if self._bdat_left >= 0:
                progressed = self._read_chunk()
            elif self.state is State.DATA:
                progressed = self._read_content()
            else:
                progressed = self._read_command()
            if not progressed:
                return

    # -- commands -------------------------------------------------------------

    def _read_command(self) -> bool:
        """Take one command line from the buffer and dispatch it.

        Searches for LF only within max_line bytes, so an endless line is
        refused as soon as max_line bytes are in, never buffered whole.
        Returns False when more bytes are needed.
        """
        buf = self._buf
        limit = self.limits.max_auth_line if self.state is State.AUTH else self.limits.max_line
        nl = buf.find(b"\n", self._scan, limit)
        if nl < 0:
            if len(buf) >= limit:
                shown = b"AUTH (response)" if self.state is State.AUTH else bytes(buf[:limit])
                self._refuse(shown, LINE_TOO_LONG, counts=False)
                self._close("line too long")
            elif self._eof:
                self._close("eof")
            else:
                self._scan = len(buf)
                return False
            return True
        line = bytes(buf[:nl])
        self._consume(nl + 1)
        self._line_crlf = line.endswith(b"\r")
        if self._line_crlf:
            line = line[:-1]
        if self.state is State.AUTH:
            self._auth_response(line)
        else:
            self._dispatch(line)
        return True

    def _dispatch(self, line: bytes) -> None:
        """Check the line with its verb's check, then proceed (OpenSMTPD's split)."""
        if line.startswith(_HTTP_METHODS):
            # A browser or proxy aimed at us (cross-protocol attack): never
            # let its following lines be read as SMTP.
            self._refuse(line, UNRECOGNIZED, counts=False)
            self._close("http request")
            return
        if _CONTROL.search(line):
            self._refuse(line, CONTROL_CHARACTER)
            return
        text = line.decode("utf-8", "surrogateescape")
        verb, _, arg = text.partition(" ")
        # isascii first: str.upper() maps some non-ASCII letters onto ASCII.
        entry = VERBS.get(verb.upper()) if verb.isascii() else None
        if entry is None:
            self._refuse(line, UNRECOGNIZED)
            return
        check, proceed = entry
        try:
            event = check(self, arg)
        except _Refusal as refusal:
            if verb.upper() == "AUTH":
                # Never log an initial response: it is the password.
                line = b"AUTH " + arg.partition(" ")[0].encode("ascii", "replace")[:20] + b" (...)"
            self._refuse(line, refusal.reply, refusal.counts)
            if refusal.fatal and self._closed is None:
                self._close("bad BDAT")
            return
        self._failed = 0
        proceed(self, event)

    def _refuse(self, line: bytes, reply: Reply, counts: bool = True) -> None:
        """Answer a line the machine refuses itself; 421 after too many in a row."""
        self._queue(reply)
        self._events.append(CommandRejected(_printable(line), reply))
        if counts:
            self._failed += 1
            if self._failed >= self.limits.max_failed_commands:
                self._queue(TOO_MANY_FAILURES)
                self._close("too many failed commands")

    def _need_sequence(self, event_type: type[Event]) -> None:
        if (self.state, event_type) not in TRANSITIONS:
            raise _Refusal(_OUT_OF_SEQUENCE[event_type](self.state))

    # Each verb: _check_X(arg) validates and returns the event (None when
    # there is none to report), raising _Refusal; _proceed_X(event) acts.

    def _check_hello(self, arg: str, extended: bool) -> Helo:
        """RFC 5321 §4.1.1.1: one domain or address literal, printable, <= 255."""
        domain = arg.strip(" ")
        if not domain:
            raise _Refusal(_syntax("EHLO hostname" if extended else "HELO hostname"))
        # A trailing dot (FQDN written absolute) is harmless in a greeting.
        bare = domain[:-1] if domain.endswith(".") and not domain.startswith("[") else domain
        if not _is_domain(bare):
            raise _Refusal(Reply(501, "5.5.4", "Invalid domain name"))
        return Helo(domain, extended)

    def _check_helo(self, arg: str) -> Helo:
        return self._check_hello(arg, extended=False)

    def _check_ehlo(self, arg: str) -> Helo:
        return self._check_hello(arg, extended=True)

    def _split_path(self, arg: str, keyword: str, bad: Reply) -> tuple[str, str]:
        """`FROM:<path> params` -> (path text, params text); one space allowed after ':'."""
        n = len(keyword)
        head = arg[:n]
        if not (head.isascii() and head.upper() == keyword):
            verb = "MAIL" if keyword == "FROM:" else "RCPT"
            raise _Refusal(_syntax(f"{verb} {keyword}<address>"))
        rest = arg[n:].lstrip(" ")
        close = rest.find(">")
        if not rest.startswith("<") or close < 0:
            raise _Refusal(bad)
        after = rest[close + 1 :]
        if after and not after.startswith(" "):
            raise _Refusal(bad)
        return rest[1:close], after

    def _check_params(self, text: str,
                      known: Mapping[str, tuple[str | None, _ParamCheck]]) -> Mapping[str, str]:
        params = _parse_params(text)
        for key in params:
            entry = known.get(key)
            if entry is None or (entry[0] is not None and not getattr(self.features, entry[0])):
                raise _Refusal(UNSUPPORTED_PARAMETER)
        checked = {key: known[key][1](self, value) for key, value in params.items()}
        return MappingProxyType(checked)

    def _check_mail(self, arg: str) -> MailFrom:
        """Sequence, TLS/AUTH policy, max_mails, `FROM:<path>`, then
        parameters (docs/smtp.md); SMTPUTF8 lets the path be UTF-8."""
        self._need_sequence(MailFrom)
        if self.features.tls_required and not self.tls:
            raise _Refusal(TLS_FIRST)
        if self.features.auth_required and self.authenticated is None:
            raise _Refusal(AUTH_FIRST)
        if self._mails >= self.limits.max_mails:
            raise _Refusal(TOO_MANY_MAILS, counts=False)
        inner, rest = self._split_path(arg, "FROM:", SENDER_SYNTAX)
        params = self._check_params(rest, MAIL_PARAMETERS)
        try:
            sender = _parse_path(inner, utf8="SMTPUTF8" in params)
        except _BadAddress as bad:
            raise _Refusal(NON_ASCII_ADDRESS if bad.non_ascii else SENDER_SYNTAX) from None
        return MailFrom(sender, params)

    def _check_rcpt(self, arg: str) -> RcptTo:
        """Sequence, `TO:<path>` (never `<>`), parameters, then max_rcpt."""
        self._need_sequence(RcptTo)
        inner, rest = self._split_path(arg, "TO:", RECIPIENT_SYNTAX)
        try:
            rcpt = _parse_path(inner, utf8=self.smtputf8)
        except _BadAddress as bad:
            raise _Refusal(NON_ASCII_ADDRESS if bad.non_ascii else RECIPIENT_SYNTAX) from None
        if rcpt is None:
            raise _Refusal(RECIPIENT_SYNTAX)
        params = self._check_params(rest, RCPT_PARAMETERS)
        if self._rcpts >= self.limits.max_rcpt:
            # RFC 5321 §4.5.3.1.8: the client sends the rest in another
            # transaction; those already accepted stay.
            raise _Refusal(TOO_MANY_RECIPIENTS, counts=False)
        return RcptTo(rcpt, params)

    def _check_data(self, arg: str) -> DataStart:
        self._need_sequence(DataStart)
        if arg:
            raise _Refusal(_syntax("DATA"))
        return DataStart()

    def _check_starttls(self, arg: str) -> StartTls:
        """RFC 3207: once, after EHLO, outside a transaction, no argument."""
        if self.tls:
            raise _Refusal(_sequence("TLS already active"))
        if not self.features.starttls:
            raise _Refusal(NOT_IMPLEMENTED)
        if arg:
            raise _Refusal(_syntax("STARTTLS"))
        self._need_sequence(StartTls)
        return StartTls()

    def _check_auth(self, arg: str) -> tuple[str, str | None]:
        """RFC 4954 §4: offered, after EHLO, outside a transaction, once, on
        TLS (538 5.7.11 before it), PLAIN or LOGIN (504 5.5.4 else)."""
        if not self.features.auth:
            raise _Refusal(NOT_IMPLEMENTED)
        if self.authenticated is not None:
            raise _Refusal(_sequence("already authenticated"))
        self._need_sequence(Auth)
        if not (self.tls or self.features.insecure_auth):
            raise _Refusal(ENCRYPTION_REQUIRED)
        mechanism, _, initial = arg.partition(" ")
        mechanism = mechanism.upper() if mechanism.isascii() else ""
        if not mechanism:
            raise _Refusal(_syntax("AUTH mechanism [initial-response]"))
        if mechanism not in ("PLAIN", "LOGIN"):
            raise _Refusal(UNKNOWN_MECHANISM)
        if " " in initial:
            raise _Refusal(_syntax("AUTH mechanism [initial-response]"))
        return mechanism, initial or None

    def _check_bdat(self, arg: str) -> tuple[int, bool]:
        """RFC 3030: `BDAT size [LAST]`.  The chunk is read whatever the
        state; a malformed line closes the session, since where the octets
        that follow end could then only be guessed."""
        if not self.features.chunking:
            raise _Refusal(NOT_IMPLEMENTED)
        words = arg.split(" ")
        size = words[0]
        # isascii first: "²" is a digit to str.isdigit() and "laſt".upper() is "LAST".
        last = len(words) == 2 and words[1].isascii() and words[1].upper() == "LAST"
        if (not (size.isascii() and size.isdigit()) or len(size) > 18 or len(words) > 2
                or (len(words) == 2 and not last)):
            raise _Refusal(BDAT_SYNTAX, fatal=True)
        return int(size), last

    def _check_no_argument(self, arg: str) -> None:
        if arg:
            raise _Refusal(Reply(501, "5.5.4", "Invalid command: unexpected argument"))

    def _check_any(self, arg: str) -> None:
        """NOOP and HELP may carry a string, which is ignored (RFC 5321 §4.1.1.9)."""

    def _check_not_implemented(self, arg: str) -> None:
        """VRFY/EXPN would let anyone enumerate users; TURN/ETRN are not ours."""
        raise _Refusal(NOT_IMPLEMENTED)

    def _proceed_owed(self, event: Event | None) -> None:
        """Hand the event to the session; parsing waits for its reply."""
        assert event is not None
        self._events.append(event)

    def _proceed_starttls(self, event: object) -> None:
        assert isinstance(event, StartTls)
        self._events.append(event)

    def _proceed_auth(self, event: object) -> None:
        """Ask for what the client did not send yet, or hand out Auth."""
        assert isinstance(event, tuple)
        mechanism, initial = event
        self._auth_mech, self._auth_user = mechanism, None
        if initial is None:
            self._ask(b"334 \r\n" if mechanism == "PLAIN" else b"334 VXNlcm5hbWU6\r\n")
        else:
            # The line's own bytes back (it was decoded with surrogateescape):
            # a non-ASCII one is then refused as base64, never raised on.
            self._auth_response(initial.encode("utf-8", "surrogateescape"), initial=True)

    def _ask(self, challenge: bytes) -> None:
        self.state = State.AUTH
        self._out.append(challenge)

    def _auth_response(self, line: bytes, initial: bool = False) -> None:
        """One SASL response line: `*` cancels, else base64 (RFC 4954 §4)."""
        self.state = State.READY
        shown = b"AUTH " + self._auth_mech.encode() + b" (...)"
        if line == b"*":
            self._refuse(shown, AUTH_CANCELLED)
            return
        try:
            decoded = b"" if initial and line == b"=" else base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            self._refuse(shown, BAD_BASE64)
            return
        text = decoded.decode("utf-8", "surrogateescape")
        if self._auth_mech == "PLAIN":
            parts = text.split("\0")
            if len(parts) != 3:
                self._refuse(shown, BAD_BASE64)
                return
            self._events.append(Auth("PLAIN", parts[1], parts[2], parts[0]))
        elif self._auth_user is None:
            self._auth_user = text
            self._ask(b"334 UGFzc3dvcmQ6\r\n")
        else:
            self._events.append(Auth("LOGIN", self._auth_user, text))

    def _proceed_bdat(self, event: object) -> None:
        """Start reading the chunk; the reply comes once it is all read."""
        assert isinstance(event, tuple)
        size, last = event
        self._bdat_left, self._bdat_chunk, self._bdat_last = size, size, last
        self._bdat_refusal = None
        if self.state is not State.BDAT:
            self._phases += 1
        if self.state is State.RCPT:
            self._size = 0
            self._bdat_cr = False
        elif self.state is not State.BDAT:
            self._bdat_refusal = _OUT_OF_SEQUENCE[BdatEnd](self.state)

    def _proceed_rset(self, event: Event | None) -> None:
        self.state = TRANSITIONS[(self.state, Reset)]
        self._rcpts = 0
        self.smtputf8 = False
        self._queue(RESET_OK)
        self._events.append(Reset())

    def _proceed_noop(self, event: Event | None) -> None:
        self._queue(OK)

    def _proceed_help(self, event: Event | None) -> None:
        self._queue(HELP)

    def _proceed_quit(self, event: Event | None) -> None:
        self._queue(BYE)
        self._events.append(Quit())
        self._close("quit")

    # -- message content ------------------------------------------------------

    def _read_content(self) -> bool:
        """Hand out content up to the last complete line, or up to CRLF.CRLF.

        The terminator is a "." line ending in CRLF whose previous line also
        ended in CRLF (docs/smtp.md); it is found with one `find` over the
        buffer, as are the line ends and stuffed dots.  Only whole lines
        leave, so a partial terminator stays buffered for the next read.
        Returns False when more bytes are needed.
        """
        if self._done:
            self._done = False
            self._events.append(DataEnd(self._size, self._size > self.limits.max_message_size))
            return True
        buf, limit = self._buf, self.limits.max_data_line
        skip = 0
        if self._prev_crlf and buf.startswith(b".\r\n"):
            end, skip = 0, 3
        else:
            term = buf.find(b"\r\n.\r\n", max(0, self._scan - 1))
            if term >= 0:
                end, skip = term + 2, 3
            else:
                end = buf.rfind(b"\n", self._scan) + 1
        fits = self._lines_fit(end)
        too_long = fits < end or (not skip and len(buf) - end >= limit)
        if fits:
            self._emit(fits)
        if too_long:
            self._queue(LINE_TOO_LONG)
            self._close("data line too long")
            return True
        if skip:
            self._consume(skip)
            self._done = True
            return True
        if fits:
            return True
        if self._eof:
            self._close("eof in data")
            return True
        self._scan = len(buf)
        return False

    def _read_chunk(self) -> bool:
        """Hand out BDAT octets as they come; BdatEnd (or the refusal) once
        all `size` are in.  Nothing in a chunk is a command or a terminator.

        Line ends are stored as for DATA (bare LF -> CRLF, bare CR -> space),
        a CR at a chunk's end waiting for the next chunk's first octet; there
        is no dot-stuffing to undo (RFC 3030 §2).
        """
        take = min(self._bdat_left, len(self._buf))
        if take:
            data = bytes(self._buf[:take])
            self._consume(take)
            self._bdat_left -= take
            if self._bdat_refusal is None:
                self._chunk_content(data, final=self._bdat_left == 0 and self._bdat_last)
            if self._bdat_left:
                return True
        elif self._bdat_left:
            if self._eof:
                self._close("eof in bdat")
                return True
            return False
        self._bdat_left = -1
        if self._bdat_last and self._bdat_cr and self._bdat_refusal is None:
            self._chunk_content(b"", final=True)
        if self._bdat_refusal is not None:
            self._refuse(f"BDAT {self._bdat_chunk}".encode(), self._bdat_refusal)
        else:
            too_big = self._size > self.limits.max_message_size
            self._events.append(BdatEnd(self._bdat_chunk, self._size, self._bdat_last, too_big))
        return True

    def _chunk_content(self, data: bytes, final: bool) -> None:
        if self._bdat_cr:
            data = b"\r" + data
            self._bdat_cr = False
        if not final and data.endswith(b"\r"):
            data = data[:-1]
            self._bdat_cr = True
        if not data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n"):
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b" ").replace(b"\n", b"\r\n")
        before = self._size
        self._size += len(data)
        if data and self._size <= self.limits.max_message_size:
            self._events.append(DataChunk(data))
        elif before <= self.limits.max_message_size < self._size:
            pass  # from here on read and dropped; BdatEnd says too_big

    def _lines_fit(self, end: int) -> int:
        """`end` if every line in buf[:end] is <= max_data_line, else where the
        first longer line starts.

        Steps a window of max_data_line bytes to the last LF inside it, so a
        chunk costs about two `rfind` calls per max_data_line, not one per line.
        """
        buf, limit, pos = self._buf, self.limits.max_data_line, 0
        while end - pos > limit:
            nl = buf.rfind(b"\n", pos, pos + limit)
            if nl < 0:
                return pos
            pos = nl + 1
        return end

    def _emit(self, n: int) -> None:
        """Consume buf[:n] (whole lines) and hand it out as one DataChunk.

        Fast path: only CRLF line ends and no line starting with "." -> the
        bytes go out as they are.  Otherwise bare LF -> CRLF, bare CR -> space,
        then one leading dot is removed from every line but a lone "." line.
        """
        buf = self._buf
        lfs = buf.count(b"\n", 0, n)
        clean = buf.count(b"\r", 0, n) == lfs == buf.count(b"\r\n", 0, n)
        stuffed = buf[0] == 0x2E or buf.find(b"\n.", 0, n) >= 0
        self._prev_crlf = n >= 2 and buf[n - 2] == 0x0D
        with memoryview(buf) as view:
            chunk = view[:n].tobytes()
        self._consume(n)
        if not clean:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b" ").replace(b"\n", b"\r\n")
        if stuffed:
            if chunk.startswith(b".") and not chunk.startswith(b".\r\n"):
                chunk = chunk[1:]
            chunk = _STUFFED.sub(b"\n", chunk)
        before, limit = self._size, self.limits.max_message_size
        self._size += len(chunk)
        if before > limit:
            return  # already too big: read and dropped
        if self._size > limit:
            # Hand out the whole lines that still fit, so the cut does not
            # depend on how the reads fell; the rest is dropped and DataEnd
            # says too_big.
            chunk = chunk[: chunk.rfind(b"\n", 0, limit - before) + 1]
        if chunk:
            self._events.append(DataChunk(chunk))


_Check = Callable[[ServerProtocol, str], "Event | None"]
_Proceed = Callable[[ServerProtocol, "Event | None"], None]

#: Verb -> (check, proceed).  Unknown verbs get 500 5.5.1; verbs the listener
#: does not offer (AUTH, STARTTLS, BDAT; see Features) and those never
#: offered get 502 5.5.1.
VERBS: Final[dict[str, tuple[_Check, _Proceed]]] = {
    "HELO": (ServerProtocol._check_helo, ServerProtocol._proceed_owed),
    "EHLO": (ServerProtocol._check_ehlo, ServerProtocol._proceed_owed),
    "MAIL": (ServerProtocol._check_mail, ServerProtocol._proceed_owed),
    "RCPT": (ServerProtocol._check_rcpt, ServerProtocol._proceed_owed),
    "DATA": (ServerProtocol._check_data, ServerProtocol._proceed_owed),
    "RSET": (ServerProtocol._check_no_argument, ServerProtocol._proceed_rset),
    "NOOP": (ServerProtocol._check_any, ServerProtocol._proceed_noop),
    "HELP": (ServerProtocol._check_any, ServerProtocol._proceed_help),
    "QUIT": (ServerProtocol._check_no_argument, ServerProtocol._proceed_quit),
    "STARTTLS": (ServerProtocol._check_starttls, ServerProtocol._proceed_starttls),
    "AUTH": (ServerProtocol._check_auth, ServerProtocol._proceed_auth),
    "BDAT": (ServerProtocol._check_bdat, ServerProtocol._proceed_bdat),
    **{
        verb: (ServerProtocol._check_not_implemented, ServerProtocol._proceed_noop)
        for verb in ("VRFY", "EXPN", "TURN", "ETRN")
    },
}
