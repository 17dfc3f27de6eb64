"""The SMTP machine's states and the events it hands the session.

Part of `protocol.py`'s machine, split the way h11 splits its own
(`_events`, `_state`...): frozen values only, no behaviour.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar, Final

from postillion.errors import Reply

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
