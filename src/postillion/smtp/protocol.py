"""The SMTP server protocol as a sans-IO state machine (docs/smtp.md).

Bytes go in with `receive_data`, events come out of `next_event`, replies go
in with `send` and come out as bytes from `data_to_send`.  Nothing here reads
a socket, sleeps or looks at a clock, so every byte sequence a client can send
can be replayed in a unit test or a fuzzer; `smtp/session.py` binds the
machine to sockets, rules, lookups and the queue (h11's shape, docs/architecture.md).
As h11 does, the machine is split in a few files: `_events.py` (states and
events), `_replies.py` (the replies it sends by itself), `_syntax.py` (paths
and parameters), `_state.py` (limits, features and the transitions table),
`_verbs.py` (each verb's check and proceed, the AUTH dialogue),
`_content.py` (reading DATA and BDAT content), and this one (the machine:
its interface, the command reader and dispatch, and its verb table); every
public name is importable from here.

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

from collections import deque
from collections.abc import Callable
from typing import Final

from postillion.errors import Reply
from postillion.smtp import _verbs
from postillion.smtp._content import read_chunk, read_content
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
# The replies and parameter tables stay importable from here, where the
# session and the tests name them (noqa: re-exported, not used here).
from postillion.smtp._replies import (  # noqa: F401
    ACCEPT_CODES,
    AUTH_CANCELLED,
    AUTH_FIRST,
    AUTH_OK,
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
    READY_TLS,
    RECIPIENT_SYNTAX,
    RESET_OK,
    SENDER_SYNTAX,
    START_DATA,
    TLS_FIRST,
    TOO_BIG,
    TOO_MANY_AUTH_FAILURES,
    TOO_MANY_FAILURES,
    TOO_MANY_MAILS,
    TOO_MANY_RECIPIENTS,
    TOO_MANY_REJECTED_RCPT,
    UNKNOWN_MECHANISM,
    UNRECOGNIZED,
    UNSUPPORTED_PARAMETER,
)
from postillion.smtp._state import (  # noqa: F401
    ALL_EXTENSIONS,
    TRANSITIONS,
    Features,
    ProtocolLimits,
)
from postillion.smtp._syntax import (  # noqa: F401
    _CONTROL,
    _HTTP_METHODS,
    MAIL_PARAMETERS,
    RCPT_PARAMETERS,
    _printable,
    _Refusal,
)
from postillion.smtp._verbs import auth_response

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
        """Parse until an event is ready, more bytes are needed, or closed.

        A BDAT chunk being read, or DATA content, goes to `_content.py`'s
        readers; anything else is a command line.
        """
        while not self._events and self._closed is None and self.state is not State.TLS:
            if self._bdat_left >= 0:
                progressed = read_chunk(self)
            elif self.state is State.DATA:
                progressed = read_content(self)
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
            auth_response(self, line)
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


_Check = Callable[[ServerProtocol, str], "Event | None"]
_Proceed = Callable[[ServerProtocol, "Event | None"], None]

#: Verb -> (check, proceed), both in `_verbs.py`.  Unknown verbs get 500
#: 5.5.1; verbs the listener does not offer (AUTH, STARTTLS, BDAT; see
#: Features) and those never offered get 502 5.5.1.
VERBS: Final[dict[str, tuple[_Check, _Proceed]]] = {
    "HELO": (_verbs.check_helo, _verbs.proceed_owed),
    "EHLO": (_verbs.check_ehlo, _verbs.proceed_owed),
    "MAIL": (_verbs.check_mail, _verbs.proceed_owed),
    "RCPT": (_verbs.check_rcpt, _verbs.proceed_owed),
    "DATA": (_verbs.check_data, _verbs.proceed_owed),
    "RSET": (_verbs.check_no_argument, _verbs.proceed_rset),
    "NOOP": (_verbs.check_any, _verbs.proceed_noop),
    "HELP": (_verbs.check_any, _verbs.proceed_help),
    "QUIT": (_verbs.check_no_argument, _verbs.proceed_quit),
    "STARTTLS": (_verbs.check_starttls, _verbs.proceed_starttls),
    "AUTH": (_verbs.check_auth, _verbs.proceed_auth),
    "BDAT": (_verbs.check_bdat, _verbs.proceed_bdat),
    **{
        verb: (_verbs.check_not_implemented, _verbs.proceed_noop)
        for verb in ("VRFY", "EXPN", "TURN", "ETRN")
    },
}
