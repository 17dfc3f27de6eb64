"""What the client writes: the message data, dot-stuffed, and the values it
puts in commands (addresses, xtext).

Part of `protocol.py`'s machine.  The stuffer works on chunks with
`bytes.find`/`replace` over each chunk, never line by line in Python
(docs/architecture.md, Performance shape): a chunk without a bare CR or LF
and without a line starting with "." goes out as it came in, uncopied.
"""

from __future__ import annotations

import re
from typing import Final

_STUFF_FROM: Final = b"\r\n."
_STUFF_TO: Final = b"\r\n.."


class DataStuffer:
    """The message as sent after 354: CRLF line ends, dot-stuffed, then `.`.

    RFC 5321 §4.5.2: a line starting with "." gets one more; §2.3.8: CR and
    LF only as CRLF, so a bare LF or a bare CR becomes CRLF (the queue
    stores CRLF only, but a message from elsewhere may not).  A CR at the
    end of a chunk is held until the next chunk says whether an LF follows.
    `end()` adds a CRLF if the message did not end with one, then `.`.
    """

    def __init__(self) -> None:
        self._line_start = True     # the next octet sent starts a line
        self._held_cr = False       # a CR ended the last chunk
        self.octets = 0             # octets returned so far

    def feed(self, chunk: bytes) -> bytes:
        """The wire form of this piece of the message."""
        if self._held_cr:
            chunk = b"\r" + chunk
            self._held_cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._held_cr = True
        if not chunk:
            return b""
        lf = chunk.count(b"\n")
        if chunk.count(b"\r") != lf or chunk.count(b"\r\n") != lf:
            # Some CR or LF stands alone: every line end becomes CRLF.
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        if _STUFF_FROM in chunk:
            chunk = chunk.replace(_STUFF_FROM, _STUFF_TO)
        if self._line_start and chunk.startswith(b"."):
            chunk = b"." + chunk
        self._line_start = chunk.endswith(b"\n")
        self.octets += len(chunk)
        return chunk

    def end(self) -> bytes:
        """The rest of the message and the end-of-data line."""
        tail = b""
        if self._held_cr:
            tail = b"\r\n"
            self._held_cr = False
            self._line_start = True
        if not self._line_start:
            tail += b"\r\n"
        tail += b".\r\n"
        self.octets += len(tail)
        self._line_start = True
        return tail


def xtext(value: str) -> str:
    """RFC 3461 §4 xtext: `+HH` for "+", "=", and anything outside "!".."~"
    (UTF-8 octets of non-ASCII characters each encoded)."""
    out = []
    for octet in value.encode("utf-8"):
        if 0x21 <= octet <= 0x7E and octet not in (0x2B, 0x3D):
            out.append(chr(octet))
        else:
            out.append(f"+{octet:02X}")
    return "".join(out)


#: Characters the client never puts in a path: controls (C0, DEL, C1),
#: lone surrogates (octets that were not UTF-8), and angle brackets, which
#: would end the path early and turn the rest into parameters or another
#: address (`<a>b@example.org>`).
_UNSENDABLE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff<>]")


def address_problem(address: str) -> str:
    """Why this address must not go into a MAIL or RCPT path, or "".

    A CR or LF would inject a command; any other control character or
    angle bracket has no place in a mailbox an MTA relays.
    """
    bad = _UNSENDABLE.search(address)
    if bad is None:
        return ""
    char = bad.group()
    if char in "\r\n":
        return "CR or LF in address"
    if char in "<>":
        return "angle bracket in address"
    return f"control character U+{ord(char):04X} in address"


_HELO_NAME: Final = re.compile(r"[A-Za-z0-9._:\[\]-]{1,255}")


def check_helo_name(name: str) -> None:
    """EHLO/HELO/LHLO argument: a domain or address literal, nothing else."""
    if not _HELO_NAME.fullmatch(name):
        raise ValueError(f"invalid HELO name {name!r}")
