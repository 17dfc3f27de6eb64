"""The SMTP server protocol as a sans-IO state machine (docs/smtp.md).

Bytes go in with `receive_data`, events come out of `next_event`, replies go
in with `send` and come out as bytes from `data_to_send`.  Nothing here reads
a socket, sleeps or looks at a clock, so every byte sequence a client can send
can be replayed in a unit test or a fuzzer; `smtp/session.py` binds the
machine to sockets, rules, lookups and the queue (h11's shape, docs/architecture.md).
As h11 does, the machine is split in a few files: `_events.py` (states and
events), `_replies.py` (the replies it sends by itself), `_syntax.py` (paths
and parameters), and this one (limits, transitions, the machine and its verb
table); every public name is importable from here.

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
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from postillion.errors import Reply
from postillion.smtp._events import (
    NEED_DATA,
    Auth,
    BdatEnd,
    CommandRejected,
    ConnectionClosed,
    DataChunk,
    DataEnd,
    DataStart,
    Event,
    Helo,
    MailFrom,
    NeedData,
    Path,
    Quit,
    RcptTo,
    Reset,
    StartTls,
    State,
)
from postillion.smtp._replies import (
    ACCEPT_CODES,
    AUTH_CANCELLED,
    AUTH_FIRST,
    AUTH_OK,  # noqa: F401  (re-exported: the session and tests name replies here)
    BAD_BASE64,
    BDAT_SYNTAX,
    BYE,
    CONTROL_CHARACTER,
    ENCRYPTION_REQUIRED,
    HELP,
    LINE_TOO_LONG,
    NON_ASCII_ADDRESS,
    NOT_IMPLEMENTED,
    OK,
    READY_TLS,  # noqa: F401
    RECIPIENT_SYNTAX,
    RESET_OK,
    SENDER_SYNTAX,
    START_DATA,
    TLS_FIRST,
    TOO_BIG,  # noqa: F401
    TOO_MANY_AUTH_FAILURES,
    TOO_MANY_FAILURES,
    TOO_MANY_MAILS,
    TOO_MANY_RECIPIENTS,
    TOO_MANY_REJECTED_RCPT,
    UNKNOWN_MECHANISM,
    UNRECOGNIZED,
    UNSUPPORTED_PARAMETER,
    _sequence,
    _syntax,
)
from postillion.smtp._syntax import (
    _CONTROL,
    _HTTP_METHODS,
    _STUFFED,
    MAIL_PARAMETERS,
    RCPT_PARAMETERS,
    _BadAddress,
    _is_domain,
    _ParamCheck,
    _parse_params,
    _parse_path,
    _printable,
    _Refusal,
)

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
