"""The control socket's wire format: length-prefixed JSON, as the channels.

A request is one frame, `{"verb": "show queue", "args": [...], "size": N}`,
followed by exactly N raw octets when the verb takes a body (`enqueue`: the
message; it never travels inside JSON, so 8-bit mail arrives unchanged).
The answer is zero or more partial frames `{"ok": true, "more": true,
"result": ...}` (a long queue listing in pieces, `monitor`'s seconds), then
one final frame: `{"ok": true, "result": ...}` or `{"ok": false, "error":
TEXT, "status": KIND}`.  Every read is bounded in size and time.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any, Final

_HEADER = struct.Struct("!I")

#: Longest request frame (the JSON part; a body has its own limit).
MAX_REQUEST: Final = 64 * 1024
#: Longest answer frame: a listing is sent in pieces well below this.
MAX_ANSWER: Final = 16 * 1024 * 1024
#: Seconds either side waits for the other's next frame (or body).
TIMEOUT: Final = 30.0

#: Why a request failed (`status`), for the client's exit code.
DENIED: Final = "denied"          # the peer may not do that
USAGE: Final = "usage"            # unknown verb, bad arguments
NOT_FOUND: Final = "not-found"    # no such envelope, message, table
DATAERR: Final = "dataerr"        # enqueue: the message or addresses are refused
TEMPFAIL: Final = "tempfail"      # try again later (queue busy, backend down)


class ProtocolError(Exception):
    """The other side broke the format: the connection is closed."""


def encode(obj: Any) -> bytes:
    payload = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogateescape")
    return _HEADER.pack(len(payload)) + payload


def decode(payload: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(payload.decode("utf-8", "surrogateescape"))
    except ValueError as e:
        raise ProtocolError(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("a frame must be a JSON object")
    return obj


async def read_frame(reader: asyncio.StreamReader, limit: int) -> dict[str, Any] | None:
    """The next frame, or None at a clean end of stream."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise ProtocolError("truncated frame header") from None
        return None
    (size,) = _HEADER.unpack(header)
    if size > limit:
        raise ProtocolError(f"frame of {size} octets exceeds {limit}")
    try:
        return decode(await reader.readexactly(size))
    except asyncio.IncompleteReadError:
        raise ProtocolError("truncated frame") from None


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(size - got, 1 << 20))
        if not chunk:
            raise ProtocolError("the daemon closed the connection")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket, limit: int = MAX_ANSWER) -> dict[str, Any]:
    """Blocking read of one frame (the client's side; the socket has a timeout)."""
    (size,) = _HEADER.unpack(_recv_exactly(sock, _HEADER.size))
    if size > limit:
        raise ProtocolError(f"frame of {size} octets exceeds {limit}")
    return decode(_recv_exactly(sock, size))
