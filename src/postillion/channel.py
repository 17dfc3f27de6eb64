"""Channels between the daemon's processes: small typed frames over a socketpair.

The parent, the smtp processes, the queue and the mta process talk as OpenSMTPD's do
with imsg: one frame type per message, a frozen dataclass encoded once,
optionally carrying file descriptors (SCM_RIGHTS).  On the wire a frame is a
4-octet big-endian length, then that many octets of JSON (`{"type": ...,
fields...}`); a frame that carries descriptors says how many (`nfds`), and
they travel with its first octet.

Everything read is bounded: a frame longer than `MAX_FRAME`, JSON that does
not parse, an unknown type, fields that do not fit it, or descriptors
missing is a `ChannelError` -- the channel is closed and the process that
sent it is not trusted again (the parent restarts a role; a role exits).
Nothing here raises anything else on what the other side sends.

A leaf: every role may import it (docs/architecture.md).
"""

from __future__ import annotations

import array
import asyncio
import dataclasses
import json
import logging
import os
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

logger = logging.getLogger("postillion.channel")

#: Longest frame either side accepts: a commit of 1000 recipients' envelopes
#: fits many times over; anything longer is a bug or an attack.
MAX_FRAME: Final = 8 * 1024 * 1024
#: Descriptors one frame may carry.
MAX_FDS: Final = 4
_HEADER: Final = struct.Struct(">I")
_READ: Final = 256 * 1024


class ChannelError(Exception):
    """The other side sent what no frame can be; the channel is closed."""


@dataclass(frozen=True, slots=True)
class Frame:
    """A message between processes.  Subclasses are the frame types,
    listed in `TYPES`."""

    fds: tuple[int, ...] = field(default=(), kw_only=True, compare=False)


# -- the frames ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Hello(Frame):
    """role -> parent: started, dropped privileges, ready to work."""
    role: str
    pid: int


@dataclass(frozen=True, slots=True)
class Committed(Frame):
    """smtp -> queue: these envelopes are durable (the JSON the queue stores)."""
    envelopes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QueuePeer(Frame):
    """parent -> smtp or queue: a channel to the other role, as fds[0].
    `peer`: "smtp", "mta" or "queue"; "drain" to the queue: an smtp
    process draining after a reload, whose commits it takes but which it
    hands no Inject."""
    peer: str


@dataclass(frozen=True, slots=True)
class Deliver(Frame):
    """queue -> parent: deliver this message as uid/gid, by `method`
    (mda/jobs.py): into a Maildir or an mbox file (`path`), the system
    mailbox, or to a command (`argv`, `environ`, already expanded)."""
    id: int
    msgid: int
    uid: int
    gid: int
    username: str
    home: str
    path: str | None
    sender: str
    rcpt: str
    dest: str
    prefix: str
    name: str | None       # the envelope's Maildir file name: a repeat replaces it
    method: str = "maildir"
    argv: tuple[str, ...] = ()
    environ: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Delivered(Frame):
    """parent -> queue: how a Deliver ended: ok, tempfail or permfail."""
    id: int
    result: str
    reason: str


@dataclass(frozen=True, slots=True)
class Forward(Frame):
    """smtp -> parent: read the `.forward` in `home` for the user `uid`
    (lookup/forward.py: only the parent may open every home)."""
    id: int
    uid: int
    home: str


@dataclass(frozen=True, slots=True)
class ForwardText(Frame):
    """parent -> smtp: `result` "found" (`text` is the file), "none" (absent
    or empty) or "tempfail" (`text` says why it cannot be used)."""
    id: int
    result: str
    text: str


@dataclass(frozen=True, slots=True)
class AuthCheck(Frame):
    """smtp -> parent: check a system account's password."""
    id: int
    user: str
    password: str


@dataclass(frozen=True, slots=True)
class AuthAnswer(Frame):
    """parent -> smtp: ok, permfail or tempfail."""
    id: int
    result: str


@dataclass(frozen=True, slots=True)
class Admit(Frame):
    """smtp -> parent: may a client from `ip` open a session on listener N?"""
    id: int
    listener: int
    ip: str


@dataclass(frozen=True, slots=True)
class Admitted(Frame):
    """parent -> smtp: 1 yes, 0 no (a session limit is reached)."""
    id: int
    ok: int


@dataclass(frozen=True, slots=True)
class Left(Frame):
    """smtp -> parent: a session admitted on listener N has ended."""
    listener: int
    ip: str


@dataclass(frozen=True, slots=True)
class Inject(Frame):
    """queue -> smtp: queue the message in fds[0] (a memfd) from `sender` to
    `rcpts` through a local session (smtp/inject.py): a bounce, or a
    `sendmail` submission by the local user `user` (uid `uid`), as the
    control socket's peer credentials said -- "" and -1 for a bounce."""
    id: int
    sender: str
    rcpts: tuple[str, ...]
    user: str = ""
    uid: int = -1


@dataclass(frozen=True, slots=True)
class Injected(Frame):
    """smtp -> queue: how an Inject ended: the reply to the end of data, or
    the one that refused it (`code` 250 = queued)."""
    id: int
    code: int
    enhanced: str
    text: str


@dataclass(frozen=True, slots=True)
class Relay(Frame):
    """queue -> mta: relay this envelope (the JSON the queue stores); the
    message is fds[0], opened read-only by the queue."""
    id: int
    envelope: str


@dataclass(frozen=True, slots=True)
class Lmtp(Frame):
    """queue -> mta: deliver this envelope over LMTP (mta/lmtp.py) to
    `destination`, RCPT TO `rcpt_to`; the message is fds[0], as for Relay.
    Answered by Relayed."""
    id: int
    envelope: str
    destination: str
    rcpt_to: str


@dataclass(frozen=True, slots=True)
class Relayed(Frame):
    """mta -> queue: how a Relay or an Lmtp ended: ok, tempfail or permfail, with the
    reply that decided it (the next hop's, or ours) and a reason for the log."""
    id: int
    result: str
    code: int
    enhanced: str
    text: str
    reason: str


@dataclass(frozen=True, slots=True)
class Control(Frame):
    """A `postillion ctl` verb the queue process (which serves the control
    socket, control/) passes on: to the parent (`stop`, `reload`), to an
    smtp process (`pause smtp`, `update table`...) or to the mta process
    (`show routes`...).  Answered by ControlDone with the same id."""
    id: int
    verb: str
    args: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ControlDone(Frame):
    """The answer to a Control: `status` "" when done (`result` is JSON
    text, "null" for nothing), else a control protocol status ("usage",
    "not-found", "tempfail"...) and `result` says why."""
    id: int
    status: str
    result: str


@dataclass(frozen=True, slots=True)
class Drain(Frame):
    """parent -> smtp: a reload replaced this process (docs/configuration.md,
    Reloading): close the listening sockets, let the open sessions finish
    under the configuration they began with (at most `timeout` s), then exit."""
    timeout: int


#: Every frame type, by the name it travels under: one explicit registry.
#: (Defined after the classes: a slotted dataclass cannot register itself.)
TYPES: Final[dict[str, type[Frame]]] = {cls.__name__: cls for cls in (
    Hello, Committed, QueuePeer, Deliver, Delivered, AuthCheck, AuthAnswer, Admit, Admitted,
    Left, Inject, Injected, Relay, Lmtp, Relayed, Forward, ForwardText, Control, ControlDone,
    Drain)}


def encode(frame: Frame) -> bytes:
    body = {f.name: getattr(frame, f.name) for f in dataclasses.fields(frame) if f.name != "fds"}
    body["type"] = type(frame).__name__
    if frame.fds:
        body["nfds"] = len(frame.fds)
    data = json.dumps(body, separators=(",", ":")).encode()
    if len(data) > MAX_FRAME:
        raise ValueError(f"frame {type(frame).__name__} of {len(data)} octets is too long")
    return _HEADER.pack(len(data)) + data


def decode(data: bytes, fds: deque[int]) -> Frame:
    """One frame from its JSON octets, taking its descriptors from `fds`."""
    try:
        body = json.loads(data)
        if not isinstance(body, dict):
            raise ValueError("not an object")
        cls = TYPES.get(body.pop("type", None))
        if cls is None:
            raise ValueError("unknown frame type")
        nfds = body.pop("nfds", 0)
        if not isinstance(nfds, int) or not 0 <= nfds <= MAX_FDS or nfds > len(fds):
            raise ValueError("descriptors missing")
        names = {f.name for f in dataclasses.fields(cls)} - {"fds"}
        if set(body) != names:
            raise ValueError("fields do not match")
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name == "fds":
                continue
            value = body[f.name]
            if isinstance(value, list):
                value = tuple(value)
            kwargs[f.name] = value
        taken = tuple(fds.popleft() for _ in range(nfds))
        frame = cls(**kwargs, fds=taken)
        _check_types(frame)
        return frame
    except (ValueError, TypeError, KeyError, RecursionError) as e:
        raise ChannelError(f"malformed frame: {e}") from None


def _check_types(frame: Frame) -> None:
    hints = {"int": int, "str": str, "str | None": (str, type(None)),
             "tuple[str, ...]": tuple}
    for f in dataclasses.fields(frame):
        if f.name == "fds":
            continue
        expected = hints.get(str(f.type))
        value = getattr(frame, f.name)
        if expected is None or not isinstance(value, expected) or isinstance(value, bool):
            raise ValueError(f"field {f.name} has the wrong type")
        if isinstance(value, tuple) and not all(isinstance(v, str) for v in value):
            raise ValueError(f"field {f.name} has the wrong type")


class Channel:
    """One end of a socketpair, read and written on the event loop.

    `handler` is called for every frame received (a coroutine function; it
    runs as its own task, so a slow one does not stall the channel).
    `closed` is set when the channel ends: EOF, an error, a malformed frame
    (then `error` says why).
    """

    def __init__(self, sock: socket.socket, handler: Callable[[Frame], Awaitable[None]],
                 name: str = "channel") -> None:
        sock.setblocking(False)
        self.sock = sock
        self.name = name
        self.handler = handler
        self.closed = asyncio.Event()
        self.error: str | None = None
        self._buffer = bytearray()
        self._fds: deque[int] = deque()
        self._out: deque[tuple[bytes, Sequence[int]]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    def send(self, frame: Frame) -> None:
        """Queue a frame.  The caller still owns and may close its
        descriptors as soon as this returns: a frame that cannot leave at
        once keeps duplicates of them until it does."""
        if self.closed.is_set():
            raise ConnectionError(f"{self.name} is closed")
        data = encode(frame)
        if self._out:
            self._out.append((data, tuple(os.dup(fd) for fd in frame.fds)))
            return
        self._write(data, frame.fds, owned=False)

    def _write(self, data: bytes, fds: Sequence[int], owned: bool) -> None:
        """Send what the socket takes; `owned`: `fds` are our duplicates,
        closed once they have gone."""
        try:
            if fds:
                ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                sent = self.sock.sendmsg([data], ancillary)
            else:
                sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            if owned:
                _close_all(fds)
            self._close(f"write: {e.strerror or e}")
            return
        if sent == 0 and fds:
            # Nothing left, so neither did the descriptors: keep them for later.
            keep = tuple(fds) if owned else tuple(os.dup(fd) for fd in fds)
            self._out.appendleft((data, keep))
            self._loop.add_writer(self.sock.fileno(), self._writable)
            return
        if owned:
            _close_all(fds)       # they went with the first octet
        if sent < len(data):
            self._out.appendleft((data[sent:], ()))
            self._loop.add_writer(self.sock.fileno(), self._writable)

    def _writable(self) -> None:
        self._loop.remove_writer(self.sock.fileno())
        pending, self._out = self._out, deque()
        while pending:
            data, fds = pending.popleft()
            self._write(data, fds, owned=True)
            if self._out:      # blocked again: keep the rest in order behind it
                self._out.extend(pending)
                return
            if self.closed.is_set():
                for _, rest in pending:
                    _close_all(rest)
                return

    def _readable(self) -> None:
        try:
            data, ancdata, _flags, _addr = self.sock.recvmsg(
                _READ, socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._close(f"read: {e.strerror or e}")
            return
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                self._fds.extend(fds)
        if not data:
            self._close(None)
            return
        self._buffer += data
        try:
            while len(self._buffer) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(self._buffer)
                if size > MAX_FRAME:
                    raise ChannelError(f"frame of {size} octets is over the limit")
                if len(self._buffer) < _HEADER.size + size:
                    break
                body = bytes(self._buffer[_HEADER.size:_HEADER.size + size])
                del self._buffer[:_HEADER.size + size]
                frame = decode(body, self._fds)
                task = self._loop.create_task(self._dispatch(frame))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except ChannelError as e:
            logger.error("%s: %s; closing it", self.name, e)
            self._close(str(e))

    async def _dispatch(self, frame: Frame) -> None:
        if logger.isEnabledFor(logging.DEBUG):       # `ctl trace channel`
            logger.debug("%s: %s received", self.name, type(frame).__name__)
        try:
            await self.handler(frame)
        except ChannelError as e:
            # A well-formed frame this side never expects: the peer is not
            # trusted again, as with a malformed one.
            logger.error("%s: %s; closing it", self.name, e)
            self._close(str(e))
        except Exception:
            logger.exception("%s: handling %s failed", self.name, type(frame).__name__)
        finally:
            for fd in frame.fds:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _close(self, error: str | None) -> None:
        if self.closed.is_set():
            return
        self.error = error
        self._loop.remove_reader(self.sock.fileno())
        self._loop.remove_writer(self.sock.fileno())
        self.sock.close()
        while self._fds:
            os.close(self._fds.popleft())
        while self._out:
            _close_all(self._out.popleft()[1])
        self.closed.set()

    def close(self) -> None:
        self._close(None)


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
