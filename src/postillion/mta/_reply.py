"""Reading the peer's replies, strictly bounded, and what its EHLO offers.

Part of `protocol.py`'s machine.  A reply is one or more lines `DDD-text`
ending with `DDD text` (RFC 5321 §4.2.1).  The reader refuses, as a
`PeerProtocolError`, anything a correct server never sends and a hostile
one would use to hold our memory or our session: a line longer than
`max_reply_line` octets (found before its end arrives, so a 10 MB line
costs one read), more than `max_reply_lines` lines in one reply, a
continuation with another code than the first line, a line that does not
start with a code 200-599 followed by `-`, a space or its end.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from postillion.errors import Reply
from postillion.mta._events import ClientLimits, PeerProtocolError

_LINE: Final = re.compile(rb"([2-5][0-9][0-9])(?:([ -])(.*))?", re.DOTALL)
_ENHANCED: Final = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: +|\Z)")
#: Control characters in a reply's text become blanks: the text reaches logs
#: and bounces, and `Reply` refuses CR and LF.
_CONTROLS: Final = {code: " " for code in (*range(0x20), 0x7F)}


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").translate(_CONTROLS)


class ReplyReader:
    """Bytes in (`feed`), whole replies out (`next_reply`).

    Holds at most what was fed and not yet parsed; lines of a reply in
    progress are kept parsed (at most `max_reply_lines` of at most
    `max_reply_line` octets).
    """

    def __init__(self, limits: ClientLimits) -> None:
        self.limits = limits
        self._buf = bytearray()
        self._scan = 0                          # _buf[:_scan] holds no LF
        self._code: bytes | None = None         # code of the reply in progress
        self._lines: list[bytes] = []           # its lines' text so far

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Octets received that are not part of a reply handed out yet."""
        return len(self._buf) + sum(len(line) + 6 for line in self._lines)

    def next_reply(self) -> Reply | None:
        """The next whole reply, None if more bytes are needed.

        Raises PeerProtocolError on a line or reply out of bounds, or on a
        line that is not a reply line.
        """
        limit = self.limits.max_reply_line
        buf, pos = self._buf, 0
        try:
            while True:
                end = buf.find(b"\n", max(pos, self._scan))
                if end < 0:
                    # A line without its LF yet: refuse as soon as even a
                    # CRLF could not bring it under the bound.
                    if len(buf) - pos >= limit:
                        raise PeerProtocolError(f"reply line longer than {limit} octets")
                    self._scan = len(buf)
                    return None
                raw = bytes(buf[pos:end])
                pos = end + 1
                if raw.endswith(b"\r"):
                    raw = raw[:-1]
                if len(raw) + 2 > limit:
                    raise PeerProtocolError(f"reply line longer than {limit} octets")
                reply = self._line(raw)
                if reply is not None:
                    return reply
        finally:
            del buf[:pos]
            self._scan = max(0, self._scan - pos)

    def _line(self, raw: bytes) -> Reply | None:
        """Take one line (without its end); the Reply if it was the last."""
        match = _LINE.fullmatch(raw)
        if match is None:
            raise PeerProtocolError(f"not a reply line: {_text(raw[:40])!r}")
        code, sep, body = match.group(1), match.group(2), match.group(3) or b""
        if self._code is not None and code != self._code:
            raise PeerProtocolError(
                f"mixed reply codes in one reply: {self._code.decode()} then {code.decode()}")
        self._code = code
        self._lines.append(body)
        if len(self._lines) > self.limits.max_reply_lines:
            raise PeerProtocolError(f"reply of more than {self.limits.max_reply_lines} lines")
        if sep == b"-":
            return None
        lines, self._code, self._lines = self._lines, None, []
        return _build(int(code), lines)


def _build(code: int, raw_lines: list[bytes]) -> Reply:
    """The Reply of these lines: the enhanced code (RFC 2034) when the
    first line carries one of the code's class, stripped from every line
    that repeats it."""
    texts = [_text(line) for line in raw_lines]
    enhanced = ""
    match = _ENHANCED.match(texts[0])
    if match and int(match.group(1)) == code // 100:
        enhanced = ".".join(match.group(1, 2, 3))
        stripped = []
        for text in texts:
            again = _ENHANCED.match(text)
            if again and ".".join(again.group(1, 2, 3)) == enhanced:
                text = text[again.end():]
            stripped.append(text)
        texts = stripped
    return Reply(code, enhanced, texts[0], tuple(texts[1:]))


@dataclass(frozen=True, slots=True)
class Extensions:
    """What the peer's EHLO (or LHLO) reply offers that the client uses.

    `size` is None when SIZE is not offered, 0 when offered without a
    limit (RFC 1870 §4), else the largest message the peer takes.
    `auth` holds the SASL mechanisms, upper-case.
    """

    pipelining: bool = False
    size: int | None = None
    dsn: bool = False
    starttls: bool = False
    auth: frozenset[str] = frozenset()
    eightbitmime: bool = False
    smtputf8: bool = False
    enhancedstatuscodes: bool = False

    @classmethod
    def parse(cls, reply: Reply) -> Extensions:
        """Read the keyword lines (every line after the first, RFC 5321
        §4.1.1.1); unknown keywords and malformed parameters are ignored,
        as OpenSMTPD does (a SIZE that is not a number is not offered)."""
        found: dict[str, object] = {}
        auth: set[str] = set()
        for line in reply.lines:
            words = line.split()
            if not words:
                continue
            keyword = words[0].upper()
            params = words[1:]
            if keyword.startswith("AUTH="):         # pre-RFC 4954 servers
                params = [keyword[5:], *params]
                keyword = "AUTH"
            if keyword == "AUTH":
                auth.update(p.upper() for p in params if p)
            elif keyword == "SIZE":
                if not params:
                    found["size"] = 0
                elif params[0].isascii() and params[0].isdigit() and len(params[0]) <= 20:
                    found["size"] = int(params[0])
            elif keyword in _FLAGS:
                found[_FLAGS[keyword]] = True
        return cls(auth=frozenset(auth), **found)  # type: ignore[arg-type]


_FLAGS: Final = {
    "PIPELINING": "pipelining", "DSN": "dsn", "STARTTLS": "starttls",
    "8BITMIME": "eightbitmime", "SMTPUTF8": "smtputf8",
    "ENHANCEDSTATUSCODES": "enhancedstatuscodes",
}
