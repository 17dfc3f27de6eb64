"""What the SMTP machine may do: its limits, the extensions it offers, and
the table of its moves.

Part of `protocol.py`'s machine, split the way h11 splits its own: this is
h11's `_state.py`, the transitions as data, beside the settings a session
fixes when it builds the machine (`ProtocolLimits`, `Features`).  Values
and tables only; the machine that walks them is in `protocol.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from postillion.errors import Reply
from postillion.smtp._events import (
    Auth,
    BdatEnd,
    DataEnd,
    DataStart,
    Event,
    Helo,
    MailFrom,
    Quit,
    RcptTo,
    Reset,
    StartTls,
    State,
)
from postillion.smtp._replies import _sequence

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
