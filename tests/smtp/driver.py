"""A tiny stand-in for smtp/session.py that drives the sans-IO protocol.

It feeds the client's bytes in the reads it is given (only when the machine
says NEED_DATA, as the real session does), answers every event that owes a
reply (accept by default: the HELO reply, 250, 354, 250 or 552 at the end of
data), and records the events and the bytes the machine wants to send.  On
the way it checks the invariants every caller relies on: the buffer is
below its limit whenever more data is asked for, and after a read it holds at
most that limit plus the read.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from postillion.errors import Reply
from postillion.smtp.protocol import (
    AUTH_OK,
    NEED_DATA,
    READY_TLS,
    START_DATA,
    Auth,
    BdatEnd,
    StartTls,
    ConnectionClosed,
    DataChunk,
    DataEnd,
    DataStart,
    Event,
    Features,
    Helo,
    MailFrom,
    ProtocolLimits,
    RcptTo,
    ServerProtocol,
    State,
)

HOSTNAME = "mx.example.org"
PEER = "192.0.2.7"

MAIL_OK = Reply(250, "2.0.0", "Ok")
RCPT_OK = Reply(250, "2.1.5", "Destination address valid: Recipient ok")
QUEUED = Reply(250, "2.0.0", "Message accepted for delivery")
TOO_BIG = Reply(552, "5.3.4", "Message too big for system")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication failed")
#: The one user/password accept_all takes.
USER, PASSWORD = "gilles", "s3cret"

Answer = Callable[[ServerProtocol, Event], Reply]


def accept_all(proto: ServerProtocol, event: Event) -> Reply:
    """What a session with an open rule set and a working queue answers."""
    match event:
        case Helo():
            return proto.helo_reply(event)
        case MailFrom():
            return MAIL_OK
        case RcptTo():
            return RCPT_OK
        case DataStart():
            return START_DATA
        case DataEnd(too_big=True):
            return TOO_BIG
        case DataEnd():
            return QUEUED
        case StartTls():
            return READY_TLS
        case Auth():
            ok = (event.username, event.password) == (USER, PASSWORD) and event.authzid in ("", USER)
            return AUTH_OK if ok else AUTH_FAILED
        case BdatEnd(too_big=True):
            return TOO_BIG
        case BdatEnd(last=True):
            return QUEUED
        case BdatEnd():
            return Reply(250, "2.0.0", f"{event.chunk} octets received")
    raise AssertionError(f"no reply owed to {event!r}")


@dataclass
class Run:
    """What one drive produced: events (adjacent DataChunks merged) and output."""

    events: list[Event] = field(default_factory=list)
    output: bytearray = field(default_factory=bytearray)
    chunks: list[bytes] = field(default_factory=list)  # DataChunks as emitted
    proto: ServerProtocol | None = None

    @property
    def replies(self) -> list[str]:
        """Every reply line, without CRLF (banner included)."""
        return self.output.decode("utf-8").split("\r\n")[:-1]

    @property
    def content(self) -> list[bytes]:
        """The content of each message, in order (merged chunks)."""
        return [e.data for e in self.events if isinstance(e, DataChunk)]

    def add(self, event: Event) -> None:
        if isinstance(event, DataChunk):
            self.chunks.append(event.data)
            if self.events and isinstance(self.events[-1], DataChunk):
                self.events[-1] = DataChunk(self.events[-1].data + event.data)
                return
        self.events.append(event)


def buffer_limit(proto: ServerProtocol) -> int:
    limits = proto.limits
    if proto.state is State.AUTH:
        return limits.max_auth_line
    return limits.max_data_line if proto.state is State.DATA else limits.max_line


def drive(
    reads: Iterable[bytes],
    limits: ProtocolLimits = ProtocolLimits(),
    answer: Answer = accept_all,
    proto: ServerProtocol | None = None,
    features: Features = Features(),
) -> Run:
    """Run a whole connection: banner, every read, EOF, until ConnectionClosed."""
    proto = proto or ServerProtocol(HOSTNAME, PEER, limits, features)
    run = Run(proto=proto)
    proto.send_banner()
    pending_reads = iter(reads)
    while True:
        run.output += proto.data_to_send()
        if proto.state is State.TLS:
            # The handshake: the next read is what the client sent over TLS.
            assert len(proto._buf) == 0, "plaintext kept across STARTTLS"
            proto.tls_started()
        event = proto.next_event()
        if event is NEED_DATA:
            assert len(proto._buf) < buffer_limit(proto), "asked for data with a full buffer"
            data = next(pending_reads, b"")
            before = len(proto._buf)
            proto.receive_data(data)
            assert len(proto._buf) <= before + len(data)
            continue
        run.add(event)
        if isinstance(event, ConnectionClosed):
            assert proto.should_close and proto.state is State.CLOSED
            assert proto.next_event() == event  # closed stays closed
            run.output += proto.data_to_send()
            return run
        if event.reply_owed:
            assert proto.pending is event
            proto.send(answer(proto, event))
        else:
            assert proto.pending is None


# -- the three ways to feed the same bytes (h11's reader helpers) ----------------


def whole(wire: bytes) -> list[bytes]:
    return [wire]


def bytewise(wire: bytes) -> list[bytes]:
    return [wire[i : i + 1] for i in range(len(wire))]


def random_splits(wire: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(wire)), min(len(wire) - 1, rng.randint(1, 12)))) if len(wire) > 1 else []
    bounds = [0, *cuts, len(wire)]
    return [wire[a:b] for a, b in zip(bounds, bounds[1:])]


FEEDS: Sequence[tuple[str, Callable[[bytes], list[bytes]]]] = (
    ("whole", whole),
    ("bytewise", bytewise),
    ("split1", lambda w: random_splits(w, 1)),
    ("split2", lambda w: random_splits(w, 2)),
    ("split3", lambda w: random_splits(w, 3)),
)
