"""The SMTP client's settings, the events its machine hands the driver, and
the results of one transaction.

Part of `protocol.py`'s machine, split the way the server's is
(`smtp/_events.py`): frozen values only, no behaviour beyond validation.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from postillion.config.model import KIB, SECONDS
from postillion.errors import Reply
from postillion.queue.envelope import DSN_NOTIFY, DSN_RET, Envelope


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """Every bound and timeout of one client session, with its unit.

    The one place their defaults live (docs/architecture.md, The MTA: the
    SMTP client); tests pass shorter timeouts.  Reply bounds are RFC 5321's
    (§4.5.3.1.5: a reply line is at most 512 octets with its CRLF); the
    timeouts are RFC 5321 §4.5.3.2's, doubled after the final dot as
    OpenSMTPD does.
    """

    max_reply_line: int = 512             # octets of one reply line, CRLF included
    max_reply_lines: int = 1000           # lines of one multi-line reply
    connect_timeout: float = 30 * SECONDS   # TCP connect
    tls_timeout: float = 30 * SECONDS       # TLS handshake (STARTTLS or on connect)
    reply_timeout: float = 300 * SECONDS    # each reply, whole (all its lines)
    data_end_timeout: float = 600 * SECONDS  # the reply after the final dot
    send_timeout: float = 300 * SECONDS     # the peer takes one written block
    quit_timeout: float = 10 * SECONDS      # QUIT's reply on a polite close
    read_buffer: int = 64 * KIB            # octets received and unread before reading pauses
    chunk_size: int = 64 * KIB             # octets of the message file read at a time

    def __post_init__(self) -> None:
        for name in ("max_reply_line", "max_reply_lines", "read_buffer", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if self.max_reply_line < 8:
            raise ValueError("max_reply_line too small for a reply code")


DEFAULT_LIMITS: Final = ClientLimits()


class Command(enum.Enum):
    """What a reply answers: the command sent, or the greeting."""

    GREETING = "greeting"
    EHLO = "EHLO"
    LHLO = "LHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    RSET = "RSET"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    DOT = "."            # the end of the message data
    QUIT = "QUIT"
    NOOP = "NOOP"


class NeedData(enum.Enum):
    """h11's sentinel: `next_event` needs more bytes before it can answer."""

    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA


# --------------------------------------------------------------------------
# Errors the peer causes


class PeerProtocolError(Exception):
    """The peer broke the protocol: a reply too long, too many lines, mixed
    codes, not `DDD[ -]`, an unexpected reply, data before TLS.

    The session cannot go on; the driver closes it and the transaction in
    flight fails temporarily with `reason` (never a crash: any bytes from
    the peer end in events or this error, tests/mta's property test).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PeerClosed(PeerProtocolError):
    """The peer closed the connection while a reply was owed."""


class PeerTimeout(PeerProtocolError):
    """A reply, or the peer taking our data, did not come in time."""


# --------------------------------------------------------------------------
# Events


@dataclass(frozen=True, slots=True)
class Event:
    """Something the peer said that the driver must act on."""


@dataclass(frozen=True, slots=True)
class Replied(Event):
    """The whole reply to a command outside a transaction (or the greeting).

    AUTH's 334 challenges are answered by the machine itself: only AUTH's
    final reply comes out.
    """

    command: Command
    reply: Reply


@dataclass(frozen=True, slots=True)
class SendBody(Event):
    """354: stream the message now with `send_data`, then `end_data`."""


@dataclass(frozen=True, slots=True)
class TransactionDone(Event):
    """A transaction begun with `begin` is over; nothing of it is pending."""

    result: TransactionResult


# --------------------------------------------------------------------------
# A transaction and its result


@dataclass(frozen=True, slots=True)
class Recipient:
    """One RCPT: the address and its DSN parameters (RFC 3461).

    `orcpt` is `type;address`, decoded, as the queue stores it (a bare
    address means `rfc822;address`).  `evpid` is the caller's reference (the
    envelope); the client only hands it back in the result.
    """

    address: str
    notify: frozenset[str] = frozenset()
    orcpt: str = ""
    evpid: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.notify, frozenset):
            object.__setattr__(self, "notify", frozenset(self.notify))
        unknown = self.notify - DSN_NOTIFY
        if unknown:
            raise ValueError(f"unknown NOTIFY values {sorted(unknown)}")
        if "NEVER" in self.notify and len(self.notify) > 1:
            raise ValueError("NOTIFY=NEVER excludes the others")


@dataclass(frozen=True, slots=True)
class Transaction:
    """One message to one or more recipients of one relay, in one MAIL.

    `sender` is "" for the null sender.  `size` (octets of the message as
    stored) is sent as `SIZE=` and checked against the peer's SIZE before
    anything is sent; None lets the session measure the file.  `ret` and
    `envid` are the DSN parameters of MAIL; `smtputf8` says the message
    needs SMTPUTF8 even if every address is ASCII; `body` "8BITMIME" adds
    `BODY=8BITMIME` when the peer offers 8BITMIME.
    """

    sender: str
    recipients: tuple[Recipient, ...]
    size: int | None = None
    ret: str = ""
    envid: str = ""
    smtputf8: bool = False
    body: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.recipients, tuple):
            object.__setattr__(self, "recipients", tuple(self.recipients))
        if not self.recipients:
            raise ValueError("a transaction needs at least one recipient")
        if self.ret not in DSN_RET:
            raise ValueError(f"unknown RET {self.ret!r}")
        if self.body not in ("", "7BIT", "8BITMIME"):
            raise ValueError(f"unknown BODY {self.body!r}")
        if self.size is not None and self.size < 0:
            raise ValueError("size must not be negative")

    @classmethod
    def from_envelopes(cls, envelopes: Sequence[Envelope], size: int | None = None) -> Transaction:
        """The transaction that relays these envelopes of one message.

        The first envelope gives the sender and the message's DSN and
        SMTPUTF8 parameters; each envelope one recipient (its `dest`), with
        its evpid as the reference.
        """
        if not envelopes:
            raise ValueError("no envelopes")
        first = envelopes[0]
        if any(e.msgid != first.msgid for e in envelopes):
            raise ValueError("envelopes of different messages")
        return cls(
            sender=first.sender,
            recipients=tuple(Recipient(e.dest, e.dsn_notify, e.dsn_orcpt, e.id) for e in envelopes),
            size=size, ret=first.dsn_ret, envid=first.dsn_envid,
            smtputf8="smtputf8" in first.flags)


class Outcome(enum.Enum):
    """How one recipient's delivery ended (OpenSMTPD's ok/tempfail/permfail)."""

    OK = "ok"
    TEMPFAIL = "tempfail"
    PERMFAIL = "permfail"

    @classmethod
    def of(cls, reply: Reply) -> Outcome:
        if reply.code < 400:
            return cls.OK
        return cls.TEMPFAIL if reply.code < 500 else cls.PERMFAIL


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """One recipient's outcome and the reply that decided it.

    `from_peer` is False when the client decided alone (the message above
    the peer's SIZE, an address it will not send, a broken connection): a
    bounce then names no remote diagnostic.
    """

    recipient: Recipient
    outcome: Outcome
    reply: Reply
    from_peer: bool = True


@dataclass(frozen=True, slots=True)
class TransactionResult:
    """Per recipient, in the order given, how the transaction ended.

    `error` is set when the connection or the peer's protocol broke during
    the transaction: the session is over, and every recipient without a
    final answer failed temporarily with that reason.
    """

    recipients: tuple[RecipientResult, ...]
    error: str = ""

    def by_outcome(self, outcome: Outcome) -> tuple[RecipientResult, ...]:
        return tuple(r for r in self.recipients if r.outcome is outcome)

    @property
    def delivered(self) -> tuple[RecipientResult, ...]:
        return self.by_outcome(Outcome.OK)
