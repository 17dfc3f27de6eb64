"""The control socket's server, in the queue process.

Each connection carries one request.  The peer is identified by the kernel
(SO_PEERCRED) when it connects; a verb marked `anyone` is open to every
local user (its handler narrows what that user sees), every other verb
needs root or the daemon's own uid.  A slow or oversized client costs one
bounded task: at most MAX_CLIENTS at a time, each read under TIMEOUT.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from postillion.control import protocol as wire

logger = logging.getLogger("postillion.control")

#: Connections served at once; one more is answered "busy" and closed.
MAX_CLIENTS: Final = 64
#: Most arguments a request may carry.
MAX_ARGS: Final = 64

_UCRED = struct.Struct("3i")


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end, as the kernel says (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int

    @property
    def admin(self) -> bool:
        """Root, or the user the daemon runs as (a daemon started without
        root is administered by whoever started it)."""
        return self.uid == 0 or self.uid == os.getuid()

    @property
    def name(self) -> str:
        """The login name: what the queue records as `username` for mail this
        user enqueued, and so what "its own mail" means."""
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return f"#{self.uid}"


def peer_of(sock: socket.socket) -> Peer:
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return Peer(pid, uid, gid)


@dataclass(frozen=True, slots=True)
class Request:
    peer: Peer
    verb: str
    args: tuple[str, ...]
    body: bytes = b""


class ControlError(Exception):
    """A refusal the client is told about (`status`: protocol.DENIED...)."""

    def __init__(self, status: str, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


class Answer:
    """What a handler uses to send partial results before its final one."""

    def __init__(self, writer: asyncio.StreamWriter,
                 reader: asyncio.StreamReader | None = None) -> None:
        self._writer = writer
        self._reader = reader

    async def part(self, result: Any) -> None:
        self._writer.write(wire.encode({"ok": True, "more": True, "result": result}))
        async with asyncio.timeout(wire.TIMEOUT):
            await self._writer.drain()

    async def gone(self, seconds: float) -> bool:
        """Wait `seconds`; True as soon as the client has closed its end
        (or sent more, which it may not): a streaming verb (`monitor`)
        ends then, not at its next write."""
        if self._reader is None:
            await asyncio.sleep(seconds)
            return False
        try:
            async with asyncio.timeout(seconds):
                await self._reader.read(1)
        except TimeoutError:
            return False
        return True


#: A verb's handler: returns the final result, or raises ControlError.
Handler = Callable[[Request, Answer], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Verb:
    handler: Handler
    anyone: bool = False            # open to every local user (else admin only)
    body_limit: int = 0             # octets of body it takes (0: none)


@dataclass(eq=False)
class ControlServer:
    """Serves `verbs` ({"show queue": Verb(...)}) on a listening Unix socket
    the parent bound."""

    sock: socket.socket
    verbs: dict[str, Verb] = field(default_factory=dict)
    _server: asyncio.AbstractServer | None = None
    _clients: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self.sock.setblocking(False)
        self._server = await asyncio.start_unix_server(self._serve, sock=self.sock)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._clients += 1
        try:
            if self._clients > MAX_CLIENTS:
                writer.write(_error(wire.TEMPFAIL, "the control socket is busy; try again"))
                return
            sock = writer.get_extra_info("socket")
            peer = peer_of(sock)
            final = await self._one(peer, reader, writer)
            writer.write(wire.encode(final))
            async with asyncio.timeout(wire.TIMEOUT):
                await writer.drain()
        except (wire.ProtocolError, TimeoutError, ConnectionError) as e:
            logger.debug("control: client dropped: %s", e)
        except asyncio.CancelledError:
            pass
        finally:
            self._clients -= 1
            self._tasks.discard(task)
            writer.close()

    async def _one(self, peer: Peer, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> dict[str, Any]:
        async with asyncio.timeout(wire.TIMEOUT):
            frame = await wire.read_frame(reader, wire.MAX_REQUEST)
        if frame is None:
            raise wire.ProtocolError("no request")
        verb_name, args, size = frame.get("verb"), frame.get("args", []), frame.get("size", 0)
        if not isinstance(verb_name, str) or not isinstance(args, list) or \
                not all(isinstance(a, str) for a in args) or len(args) > MAX_ARGS or \
                not isinstance(size, int) or size < 0:
            raise wire.ProtocolError("malformed request")
        logger.debug("control: uid %d (pid %d): %s%s", peer.uid, peer.pid, verb_name,
                     "".join(f" {a!r}" for a in args))
        verb = self.verbs.get(verb_name)
        if verb is None:
            return {"ok": False, "status": wire.USAGE, "error": f"unknown verb: {verb_name}"}
        if not (verb.anyone or peer.admin):
            logger.warning("control: %s refused to uid %d (pid %d)", verb_name, peer.uid, peer.pid)
            return {"ok": False, "status": wire.DENIED,
                    "error": f"{verb_name}: permission denied (root only)"}
        if size > verb.body_limit:
            return {"ok": False, "status": wire.DATAERR if verb.body_limit else wire.USAGE,
                    "error": f"{verb_name}: body of {size} octets exceeds {verb.body_limit}"}
        body = b""
        if size:
            try:
                async with asyncio.timeout(wire.TIMEOUT):
                    body = await reader.readexactly(size)
            except asyncio.IncompleteReadError:
                raise wire.ProtocolError("truncated body") from None
        try:
            result = await verb.handler(Request(peer, verb_name, tuple(args), body), Answer(writer, reader))
        except ControlError as e:
            return {"ok": False, "status": e.status, "error": e.text}
        except (ConnectionError, TimeoutError):
            raise
        except Exception as e:
            # A bug in one verb answers that client; it never ends the queue.
            logger.exception("control: %s failed", verb_name)
            return {"ok": False, "status": wire.TEMPFAIL, "error": f"{verb_name} failed: {e}"}
        return {"ok": True, "result": result}


def _error(status: str, text: str) -> bytes:
    return wire.encode({"ok": False, "status": status, "error": text})


def bind_control(spool: os.PathLike[str] | str, uid: int, gid: int) -> socket.socket:
    """The parent's part: bind `control.sock` at the top of the spool, 0666
    (the spool's 0711 lets every user reach it but not list the spool), owned
    by the queue user.  A socket left there is stale: the spool lock is held."""
    from postillion.paths import control_path
    path = control_path(spool)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o111)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o666)
        if os.geteuid() == 0:
            os.lchown(path, uid, gid)
        sock.listen(MAX_CLIENTS)
    except BaseException:
        sock.close()
        raise
    return sock
