"""The client side of the control socket, for `ctl`, `mailq` and `sendmail`.

Blocking and small: these commands do one request and exit.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from postillion.control import protocol as wire
from postillion.paths import control_path


class ControlFailed(Exception):
    """The daemon refused the request (`status` says why) or is unreachable
    (`status` "unavailable")."""

    def __init__(self, status: str, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


UNAVAILABLE = "unavailable"


def connect(spool: Path, timeout: float = wire.TIMEOUT) -> socket.socket:
    path = control_path(spool)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError as e:
        sock.close()
        raise ControlFailed(UNAVAILABLE, f"cannot reach the daemon at {path}: "
                                         f"{e.strerror or e} (is postillion running on "
                                         f"this spool? -s or POSTILLION_SPOOL name another)") from None
    return sock


def request(spool: Path, verb: str, args: list[str] | tuple[str, ...] = (), body: bytes = b"",
            on_part: Callable[[Any], None] | None = None, timeout: float = wire.TIMEOUT) -> Any:
    """Send one request and return the final result; partial results go to
    `on_part` as they arrive.  Raises ControlFailed."""
    result = None
    for more, value in stream(spool, verb, args, body, timeout=timeout):
        if more:
            if on_part is not None:
                on_part(value)
        else:
            result = value
    return result


def stream(spool: Path, verb: str, args: list[str] | tuple[str, ...] = (), body: bytes = b"",
           timeout: float = wire.TIMEOUT) -> Iterator[tuple[bool, Any]]:
    """(more, result) pairs: the partial results, then the final one."""
    with connect(spool, timeout) as sock:
        try:
            sock.sendall(wire.encode({"verb": verb, "args": list(args), "size": len(body)}))
            if body:
                try:
                    sock.sendall(body)
                except OSError:
                    # Refused before it was read (too big, not allowed): the
                    # answer saying why is already waiting to be read.
                    pass
            while True:
                frame = wire.recv_frame(sock)
                if not frame.get("ok"):
                    raise ControlFailed(str(frame.get("status", "")), str(frame.get("error", "refused")))
                more = bool(frame.get("more"))
                yield more, frame.get("result")
                if not more:
                    return
        except (OSError, wire.ProtocolError) as e:
            raise ControlFailed(UNAVAILABLE, f"control socket: {e}") from None
