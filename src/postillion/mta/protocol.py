"""The SMTP and LMTP client as a sans-IO state machine (docs/architecture.md,
The MTA: the SMTP client).

Bytes from the peer go in with `receive_data`, events come out of
`next_event`; commands are asked for with methods (`hello`, `starttls`,
`auth`, `begin`, `rset`, `quit`) and come out as bytes from
`data_to_send`; the message itself goes through `send_data`/`end_data`,
which return its wire form directly so a large message is never copied
into another buffer.  Nothing here reads a socket, sleeps or looks at a
clock, so every reply a peer can send is replayed in a unit test or a
fuzzer; `mta/session.py` binds the machine to a connection, TLS and
timeouts.  The shape is the server's (`smtp/protocol.py`) and h11's; the
parts live in `_events.py` (settings, events, results), `_reply.py`
(reading replies, EHLO keywords) and `_data.py` (dot-stuffing, xtext,
addresses), and every public name is importable from here.

Why not aiosmtplib: it sends MAIL, each RCPT and DATA one round trip at a
time, and hands per-recipient failures back as exceptions of a whole
`sendmail` call; a relay sends one message to many recipients of a domain
in one transaction and needs each recipient's own reply (and LMTP's reply
per recipient after the dot).  This machine pipelines (RFC 2920) MAIL, the
RCPTs and DATA in one write when the peer offers PIPELINING, and maps
every reply back to the command and the recipient it answers.

A transaction (`begin`) ends in one `TransactionDone` event whose result
gives every recipient ok, tempfail or permfail with the reply that decided
it: its own RCPT reply if refused there; MAIL's or DATA's reply (a 5xx
applies to all, a 4xx is temporary); the reply after the dot (LMTP: its
own, in RCPT order).  Before anything is sent the machine refuses alone
what it must never send or what the peer said it would refuse: an address
with CR, LF, another control character or an angle bracket; a message
above the peer's SIZE (permanent 5.3.4); a UTF-8 address or message to a
peer without SMTPUTF8 (permanent 5.6.7).  A 421 anywhere sets `closing`.
"""

from __future__ import annotations

import base64
import enum
from collections import deque
from dataclasses import dataclass

from postillion.errors import Reply
from postillion.mta._data import DataStuffer, address_problem, check_helo_name, xtext
from postillion.mta._events import (
    DEFAULT_LIMITS,
    NEED_DATA,
    ClientLimits,
    Command,
    Event,
    NeedData,
    Outcome,
    PeerClosed,
    PeerProtocolError,
    PeerTimeout,
    Recipient,
    RecipientResult,
    Replied,
    SendBody,
    Transaction,
    TransactionDone,
    TransactionResult,
)
from postillion.mta._reply import Extensions, ReplyReader

__all__ = [
    "DEFAULT_LIMITS", "NEED_DATA", "ClientLimits", "ClientProtocol", "Command", "DataStuffer",
    "Event", "Extensions", "NeedData", "Outcome", "PeerClosed", "PeerProtocolError",
    "PeerTimeout", "Recipient", "RecipientResult", "Replied", "ReplyReader", "SendBody",
    "Transaction", "TransactionDone", "TransactionResult", "UsageError", "xtext",
]

#: Replies the client makes up itself, for recipients it refused alone.
TOO_BIG = Reply(552, "5.3.4", "Message too big for destination")
NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "SMTPUTF8 not offered by destination")


def bad_address(problem: str, sender: bool) -> Reply:
    return Reply(553, "5.1.7" if sender else "5.1.3", f"Invalid address: {problem}")


class UsageError(Exception):
    """The driver called the machine out of turn (a bug, never the peer's)."""


class _State(enum.Enum):
    GREETING = "greeting"   # the banner is owed
    IDLE = "idle"           # nothing owed: a command may be sent
    WAITING = "waiting"     # replies owed
    BODY = "body"           # 354 received: the message is being sent
    ERROR = "error"         # the peer broke the protocol: nothing more


#: Positive reply classes each command accepts; any other 2xx/3xx is a
#: protocol error (a 250 to DATA would make us send the message as commands).
_POSITIVE = {Command.DATA: (3,), Command.AUTH: (2, 3)}


@dataclass(slots=True)
class _Pending:
    command: Command
    index: int = -1          # RCPT: recipient index; DOT (LMTP): accepted index


class _Tx:
    """The bookkeeping of one transaction: who has a final answer yet."""

    def __init__(self, tx: Transaction, pipelined: bool) -> None:
        self.tx = tx
        self.pipelined = pipelined
        self.results: list[RecipientResult | None] = [None] * len(tx.recipients)
        self.to_send: list[int] = []       # recipients that get a RCPT
        self.sent = 0                      # RCPTs written (unpipelined: one at a time)
        self.accepted: list[int] = []      # recipients whose RCPT got 2xx
        self.override: tuple[Outcome, Reply] | None = None  # RSET or MAIL refused
        self.discard = False               # 354 with nobody to send to: only "."

    def settle(self, index: int, reply: Reply, outcome: Outcome | None = None,
               from_peer: bool = True) -> None:
        if self.results[index] is None:
            self.results[index] = RecipientResult(
                self.tx.recipients[index], outcome or Outcome.of(reply), reply, from_peer)

    def refuse_all(self, reply: Reply, from_peer: bool = False) -> None:
        for index in range(len(self.results)):
            self.settle(index, reply, from_peer=from_peer)

    def result(self, fallback: Reply, error: str = "") -> TransactionResult:
        """Everyone still open gets the override (MAIL or RSET refused),
        else `fallback` as a temporary failure."""
        for index in range(len(self.results)):
            if self.override is not None:
                outcome, reply = self.override
                self.settle(index, reply, outcome)
            else:
                self.settle(index, fallback, Outcome.TEMPFAIL, from_peer=False)
        return TransactionResult(tuple(r for r in self.results if r is not None), error)


class ClientProtocol:
    """One client connection's dialogue; see the module docstring.

    The driver's loop::

        proto = ClientProtocol(lmtp=False, limits=limits)
        while True:
            event = proto.next_event()            # may raise PeerProtocolError
            write(proto.data_to_send())           # commands, AUTH answers, RCPT after MAIL...
            if event is NEED_DATA:
                proto.receive_data(await read())  # b"" at EOF
            elif isinstance(event, SendBody):
                for chunk in message: write(proto.send_data(chunk))
                write(proto.end_data())
            else:
                ...                               # Replied, TransactionDone

    `extensions` is what the last successful EHLO/LHLO offered (none after
    STARTTLS until the next EHLO); `waiting_for` the command whose reply
    is owed next (the driver chooses its timeout from it).
    """

    def __init__(self, *, lmtp: bool = False, limits: ClientLimits = DEFAULT_LIMITS) -> None:
        self.lmtp = lmtp
        self.limits = limits
        self.extensions = Extensions()
        self.closing = False                 # the peer sent a 421: it is closing
        self.replies = 0                     # whole replies received so far
        self._reader = ReplyReader(limits)
        self._state = _State.GREETING
        self._pending: deque[_Pending] = deque([_Pending(Command.GREETING)])
        self._events: deque[Event] = deque()
        self._out: list[bytes] = []
        self._eof = False
        self._error: PeerProtocolError | None = None
        self._tx: _Tx | None = None
        self._dirty = False                  # a transaction may be open at the peer
        self._auth_steps: list[bytes] = []
        self._stuffer: DataStuffer | None = None
        self._mail_params = ""

    # -- bytes in, events out -----------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the peer; b"" means it closed the connection."""
        if data:
            self._reader.feed(data)
        else:
            self._eof = True

    @property
    def buffered(self) -> int:
        """Octets received and not yet consumed as a reply."""
        return self._reader.buffered

    @property
    def waiting_for(self) -> Command | None:
        return self._pending[0].command if self._pending else None

    def next_event(self) -> Event | NeedData:
        """The next event, or NEED_DATA.

        Raises PeerProtocolError (PeerClosed at EOF while a reply is owed)
        on anything the peer should not have sent; the machine is then
        finished and raises it again on every call.  Any other exception is
        a bug.
        """
        if self._error is not None:
            raise self._error
        while not self._events:
            if not self._pending:
                raise UsageError("no reply is owed")
            try:
                reply = self._reader.next_reply()
                if reply is None:
                    if self._eof:
                        raise PeerClosed(f"connection closed by the peer while waiting "
                                         f"for the reply to {self._pending[0].command.value}")
                    return NEED_DATA
                self.replies += 1
                self._on_reply(self._pending.popleft(), reply)
            except PeerProtocolError as e:
                self.fail(e)
                raise
        return self._events.popleft()

    def fail(self, error: PeerProtocolError) -> None:
        """The driver's own failures (timeout, connection lost) end the
        machine too, so nothing is sent after them."""
        if self._error is None:
            self._error = error
        self._state = _State.ERROR

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    # -- commands -------------------------------------------------------------

    def _send(self, line: str, command: Command, index: int = -1) -> None:
        self._out.append(line.encode("utf-8") + b"\r\n")
        self._pending.append(_Pending(command, index))
        self._state = _State.WAITING

    def _idle(self, what: str) -> None:
        if self._state is not _State.IDLE:
            raise UsageError(f"{what} while {self._state.value}")

    def hello(self, name: str) -> None:
        """EHLO, or LHLO on an LMTP connection."""
        self._idle("EHLO")
        check_helo_name(name)
        command = Command.LHLO if self.lmtp else Command.EHLO
        self._send(f"{command.value} {name}", command)

    def helo(self, name: str) -> None:
        """HELO: only after EHLO was refused (the driver decides)."""
        self._idle("HELO")
        check_helo_name(name)
        self._send(f"HELO {name}", Command.HELO)

    def starttls(self) -> None:
        self._idle("STARTTLS")
        self._send("STARTTLS", Command.STARTTLS)

    def tls_started(self) -> None:
        """The handshake is done: what the plain EHLO offered is forgotten
        (RFC 3207 §4.2); EHLO must be sent again."""
        self._idle("tls_started")
        if self._reader.buffered:
            self.fail(PeerProtocolError("data received before TLS, after the STARTTLS reply"))
            raise self._error  # type: ignore[misc]
        self.extensions = Extensions()

    def auth(self, mechanism: str, username: str, password: str) -> None:
        """AUTH PLAIN (initial response, RFC 4616) or LOGIN (two 334s).

        The final reply comes out as `Replied(AUTH, reply)`; the machine
        answers the challenges itself.
        """
        self._idle("AUTH")
        if "\0" in username or "\0" in password:
            raise ValueError("NUL in credentials")
        mechanism = mechanism.upper()
        if mechanism == "PLAIN":
            token = _b64(f"\0{username}\0{password}")
            self._auth_steps = []
            self._send(f"AUTH PLAIN {token}", Command.AUTH)
        elif mechanism == "LOGIN":
            self._auth_steps = [_b64(username).encode(), _b64(password).encode()]
            self._send("AUTH LOGIN", Command.AUTH)
        else:
            raise ValueError(f"unsupported AUTH mechanism {mechanism}")

    def rset(self) -> None:
        self._idle("RSET")
        self._send("RSET", Command.RSET)

    def noop(self) -> None:
        self._idle("NOOP")
        self._send("NOOP", Command.NOOP)

    def quit(self) -> None:
        self._idle("QUIT")
        self._send("QUIT", Command.QUIT)

    # -- a transaction --------------------------------------------------------

    def begin(self, tx: Transaction) -> None:
        """Start sending one message: RSET first if an earlier transaction
        did not end at the dot, then MAIL, each RCPT and DATA -- all in one
        write when the peer offers PIPELINING, else one at a time.

        Recipients refused locally (see the module docstring) get no RCPT;
        if nobody is left, `TransactionDone` comes at once and nothing is
        sent.
        """
        self._idle("MAIL")
        ext = self.extensions
        state = _Tx(tx, ext.pipelining)
        self._tx = state
        utf8 = tx.smtputf8 or not tx.sender.isascii()
        problem = address_problem(tx.sender)
        if problem:
            state.refuse_all(bad_address(problem, sender=True))
        elif ext.size and tx.size is not None and tx.size > ext.size:
            state.refuse_all(TOO_BIG)
        elif utf8 and not ext.smtputf8:
            state.refuse_all(NEEDS_SMTPUTF8)
        for index, rcpt in enumerate(tx.recipients):
            problem = address_problem(rcpt.address)
            if problem or not rcpt.address:
                state.settle(index, bad_address(problem or "empty", sender=False), from_peer=False)
            elif not rcpt.address.isascii() and not ext.smtputf8:
                state.settle(index, NEEDS_SMTPUTF8, from_peer=False)
            elif state.results[index] is None:
                state.to_send.append(index)
                utf8 = utf8 or not rcpt.address.isascii()
        if not state.to_send:
            self._finish()
            return
        self._mail_params = self._mail_parameters(tx, utf8)
        self._dirty, was_dirty = True, self._dirty
        if was_dirty:
            self._send("RSET", Command.RSET)
            if not state.pipelined:
                return
        self._send_mail()

    def _mail_parameters(self, tx: Transaction, utf8: bool) -> str:
        ext = self.extensions
        params = []
        if ext.size is not None and tx.size is not None:
            params.append(f"SIZE={tx.size}")
        if tx.body == "8BITMIME" and ext.eightbitmime:
            params.append("BODY=8BITMIME")
        if utf8:
            params.append("SMTPUTF8")
        if ext.dsn:
            if tx.ret:
                params.append(f"RET={tx.ret}")
            if tx.envid:
                params.append(f"ENVID={xtext(tx.envid)}")
        return "".join(f" {p}" for p in params)

    def _rcpt_parameters(self, rcpt: Recipient) -> str:
        if not self.extensions.dsn:
            return ""
        params = []
        if rcpt.notify:
            order = ("NEVER", "SUCCESS", "FAILURE", "DELAY")
            params.append("NOTIFY=" + ",".join(n for n in order if n in rcpt.notify))
        if rcpt.orcpt:
            kind, semi, address = rcpt.orcpt.partition(";")
            if not semi:
                kind, address = "rfc822", rcpt.orcpt
            # A UTF-8 ORCPT would need RFC 6533's utf-8 type: left out.
            if address.isascii() and kind.isascii() and kind.replace("-", "").isalnum():
                params.append(f"ORCPT={kind};{xtext(address)}")
        return "".join(f" {p}" for p in params)

    def _send_mail(self) -> None:
        state = self._tx
        assert state is not None
        self._send(f"MAIL FROM:<{state.tx.sender}>{self._mail_params}", Command.MAIL)
        if state.pipelined:
            while state.sent < len(state.to_send):
                self._send_rcpt()
            self._send("DATA", Command.DATA)

    def _send_rcpt(self) -> None:
        state = self._tx
        assert state is not None
        index = state.to_send[state.sent]
        state.sent += 1
        rcpt = state.tx.recipients[index]
        self._send(f"RCPT TO:<{rcpt.address}>{self._rcpt_parameters(rcpt)}", Command.RCPT, index)

    def send_data(self, chunk: bytes) -> bytes:
        """The wire form of the next piece of the message (after SendBody)."""
        if self._state is not _State.BODY or self._stuffer is None:
            raise UsageError("message data outside DATA")
        return self._stuffer.feed(chunk)

    def end_data(self) -> bytes:
        """The end of the message; the reply (LMTP: one per accepted
        recipient) then ends the transaction."""
        if self._state is not _State.BODY or self._stuffer is None or self._tx is None:
            raise UsageError("end of data outside DATA")
        tail = self._stuffer.end()
        self._stuffer = None
        self._expect_dot(self._tx)
        return tail

    def _expect_dot(self, state: _Tx) -> None:
        self._state = _State.WAITING
        if self.lmtp and state.accepted and not state.discard:
            for index in state.accepted:
                self._pending.append(_Pending(Command.DOT, index))
        else:
            self._pending.append(_Pending(Command.DOT))

    def abort(self, reply: Reply, error: str) -> TransactionResult:
        """The result of the transaction in flight when the connection or
        the protocol broke: final answers stand, every other recipient
        fails temporarily with `reply`."""
        state = self._tx
        if state is None:
            raise UsageError("no transaction to abort")
        self._tx = None
        self.fail(PeerProtocolError(error))
        return state.result(reply, error)

    @property
    def in_transaction(self) -> bool:
        return self._tx is not None

    # -- replies --------------------------------------------------------------

    def _on_reply(self, pending: _Pending, reply: Reply) -> None:
        command = pending.command
        if reply.code == 421:
            self.closing = True
        klass = reply.code // 100
        if klass < 4 and klass not in _POSITIVE.get(command, (2,)):
            raise PeerProtocolError(f"unexpected reply {reply} to {command.value}")
        if command is Command.STARTTLS and klass == 2 and self._reader.buffered:
            raise PeerProtocolError("data received with the STARTTLS reply, before TLS")
        if command is Command.AUTH and klass == 3:
            if reply.code != 334 or not self._auth_steps:
                raise PeerProtocolError(f"unexpected AUTH challenge {reply}")
            self._out.append(self._auth_steps.pop(0) + b"\r\n")
            self._pending.appendleft(pending)
            return
        if self._tx is not None and command in _TX_COMMANDS:
            self._on_tx_reply(self._tx, pending, reply)
            return
        if command in (Command.EHLO, Command.LHLO) and klass == 2:
            self.extensions = Extensions.parse(reply)
        if command is Command.RSET and klass == 2:
            self._dirty = False
        self._auth_steps = []
        self._idle_if_done()
        self._events.append(Replied(command, reply))

    def _idle_if_done(self) -> None:
        if not self._pending:
            self._state = _State.IDLE

    def _on_tx_reply(self, state: _Tx, pending: _Pending, reply: Reply) -> None:
        command, positive = pending.command, reply.code < 400
        if command is Command.RSET:
            if not positive:
                state.override = (Outcome.TEMPFAIL, reply)
            if state.pipelined:
                pass
            elif positive:
                self._send_mail()
            else:
                self._finish()
        elif command is Command.MAIL:
            if not positive and state.override is None:
                state.override = (Outcome.of(reply), reply)
            if state.pipelined:
                pass
            elif positive:
                self._send_rcpt()
            else:
                self._finish()
        elif command is Command.RCPT:
            if state.override is None:   # after a refused MAIL, RCPT replies mean nothing
                if positive:
                    state.accepted.append(pending.index)
                else:
                    state.settle(pending.index, reply)
            if not state.pipelined:
                if state.sent < len(state.to_send):
                    self._send_rcpt()
                elif state.accepted:
                    self._send("DATA", Command.DATA)
                else:
                    self._finish()
        elif command is Command.DATA:
            if not positive:
                for index in state.accepted:
                    state.settle(index, reply)
                self._finish()
            elif state.override is not None or not state.accepted:
                # RFC 2920 §3.1: DATA accepted with nobody to send to --
                # send an empty message (just the dot) and forget it.
                state.discard = True
                self._out.append(b".\r\n")
                self._expect_dot(state)
            else:
                self._state = _State.BODY
                self._stuffer = DataStuffer()
                self._events.append(SendBody())
        elif command is Command.DOT:
            if not state.discard:
                if self.lmtp:
                    state.settle(pending.index, reply)
                else:
                    for index in state.accepted:
                        state.settle(index, reply)
            if not self._pending:
                self._dirty = False
                self._finish()

    def _finish(self) -> None:
        state = self._tx
        assert state is not None
        self._tx = None
        self._pending.clear()       # nothing of the transaction is owed any more
        self._state = _State.IDLE
        self._events.append(TransactionDone(state.result(
            Reply(451, "4.5.0", "No reply from destination"))))


_TX_COMMANDS = frozenset({Command.RSET, Command.MAIL, Command.RCPT, Command.DATA, Command.DOT})


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")
