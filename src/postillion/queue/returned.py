"""The original message as a bounce returns it: whole, or its header only.

A delivery status notification ends with the message it reports on
(RFC 3462/6522, third part): the whole message (`message/rfc822`) or only
its header (`text/rfc822-headers`).  Whatever we attach must leave the DSN
itself a valid message, and must not damage the original on the way:

- `message/rfc822` may only be sent 7bit or 8bit (RFC 2046 §5.2.1; binary
  needs BINARYMIME, which we do not offer).  So the message is attached
  whole only when it can go as it is: every line at most `LINE_MAX` octets,
  CRLF line ends only, no NUL.  8-bit octets in the body are declared
  `8bit`; a header in UTF-8 (an SMTPUTF8 message, RFC 6532) makes the part
  `message/global`, the type RFC 6532 §3.7 defines for it.  Never base64 or
  quoted-printable: receivers would see an opaque blob.
- Otherwise the header is attached.  A clean ASCII header goes as it is
  (7bit), a clean UTF-8 one as `message/global-headers` (8bit); anything
  else -- raw 8-bit bytes that are not UTF-8, a header line longer than
  `LINE_MAX`, a bare CR or LF, a NUL -- as `text/rfc822-headers` in
  quoted-printable, which is legal for a text type and gives the reader
  back every byte.

Memory is bounded: the header is read up to `HEADER_MAX` octets, and the
whole message is scanned in `CHUNK` reads, then copied in chunks again,
never held at once.  The file must be seekable; it is read from offset 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Final, Literal

LINE_MAX: Final = 998
"""Longest line, in octets without its CRLF, that RFC 5322 §2.1.1 allows."""

HEADER_MAX: Final = 256 * 1024
"""Octets of the original header returned at most; a longer header is cut
after its last whole line (and the message is then never returned whole)."""

CHUNK: Final = 64 * 1024
"""Octets read from the original message at a time."""

QP_WIDTH: Final = 76
"""Longest quoted-printable line, soft break included (RFC 2045 §6.7)."""

ContentType = Literal["message/rfc822", "message/global", "text/rfc822-headers", "message/global-headers"]
Encoding = Literal["7bit", "8bit", "quoted-printable"]


class BoundaryCollision(Exception):
    """The MIME boundary chosen occurs in the content: choose another."""


@dataclass(frozen=True, slots=True)
class Returned:
    """What the third part of a DSN carries, and how it is declared.

    `whole` is True when the whole original message is copied from the file
    (`size` octets); otherwise `body` holds the encoded header.  `reason`
    says, for the sender's eyes, why a message that could have been returned
    whole was not ("" when it was, or was never meant to be).
    """

    content_type: ContentType
    encoding: Encoding
    whole: bool
    size: int
    body: bytes = b""
    reason: str = ""

    @property
    def eightbit(self) -> bool:
        return self.encoding == "8bit"

    def write_to(self, write: Callable[[bytes], object], original: BinaryIO) -> None:
        """Write the part's body: the header bytes, or the message copied
        from `original` in chunks."""
        if not self.whole:
            write(self.body)
            return
        original.seek(0)
        left = self.size
        while left > 0:
            chunk = original.read(min(CHUNK, left))
            if not chunk:
                raise ValueError("the original message shrank while it was being returned")
            write(chunk)
            left -= len(chunk)


class _Scan:
    """Line statistics over a stream of chunks: the longest line (octets
    without CRLF), bare CR or LF, NUL, 8-bit octets, and whether `needle`
    occurs.  A CR ending a chunk is held back until the next one shows
    whether an LF follows it."""

    __slots__ = ("_cr", "_line", "_needle", "_tail", "bare", "eightbit", "found", "longest", "nul", "size")

    def __init__(self, needle: bytes) -> None:
        self.size = 0
        self.longest = 0
        self.bare = False
        self.nul = False
        self.eightbit = False
        self.found = False
        self._line = 0
        self._cr = False
        self._tail = b""
        self._needle = needle

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        window = self._tail + chunk
        if self._needle in window:
            self.found = True
        self._tail = window[-(len(self._needle) - 1):] if len(self._needle) > 1 else b""
        data = b"\r" + chunk if self._cr else chunk
        self._cr = data.endswith(b"\r")
        if self._cr:
            data = data[:-1]
        if b"\0" in data:
            self.nul = True
        if not data.isascii():
            self.eightbit = True
        crlf = data.count(b"\r\n")
        if data.count(b"\r") != crlf or data.count(b"\n") != crlf:
            self.bare = True
        if not crlf:
            self._line += len(data)
        else:
            lines = data.split(b"\r\n")
            self.longest = max(self.longest, self._line + len(lines[0]), *(len(x) for x in lines[1:]))
            self._line = len(lines[-1])
        self.longest = max(self.longest, self._line)

    def finish(self) -> None:
        if self._cr:  # a CR that ends the message: bare
            self.bare = True
            self._line += 1
            self.longest = max(self.longest, self._line)
            self._cr = False

    @property
    def clean(self) -> bool:
        """Fit for 7bit/8bit as it is: short CRLF lines, no NUL."""
        return not (self.bare or self.nul or self.found) and self.longest <= LINE_MAX


def read_header(original: BinaryIO) -> tuple[bytes, bool]:
    """The header section of `original`: its lines, each with its CRLF,
    without the empty line that ends it; and whether it is complete.

    A message without an empty line is all header.  A header longer than
    HEADER_MAX is cut after its last whole line within the limit (or at the
    limit itself, when a single line is longer), and reported incomplete.
    """
    original.seek(0)
    buf = bytearray()
    eof = False
    while len(buf) <= HEADER_MAX:
        start = max(0, len(buf) - 3)
        chunk = original.read(CHUNK)
        if not chunk:
            eof = True
            break
        buf += chunk
        if buf.startswith(b"\r\n"):
            return b"", True
        end = buf.find(b"\r\n\r\n", start)
        if end >= 0:
            if end + 2 <= HEADER_MAX:
                return bytes(buf[:end + 2]), True
            break
    if eof and len(buf) <= HEADER_MAX:  # no empty line: the whole message is header
        return bytes(buf) + (b"" if not buf or buf.endswith(b"\r\n") else b"\r\n"), True
    cut = buf.rfind(b"\r\n", 0, HEADER_MAX)
    head = bytes(buf[:cut + 2]) if cut > 0 else bytes(buf[:HEADER_MAX]) + b"\r\n"
    return head, False


def plan(original: BinaryIO, *, whole: bool, whole_max: int, boundary: bytes) -> Returned:
    """Decide what returns the original: the whole message when `whole` is
    wanted, it is at most `whole_max` octets and can travel as it is (see
    the module docstring); its header otherwise.

    Raises BoundaryCollision when `boundary` occurs in what would be
    attached, so the caller picks another one.
    """
    header, complete = read_header(original)
    reason = ""
    if whole:
        outcome = _plan_whole(original, header, complete, whole_max, boundary)
        if isinstance(outcome, Returned):
            return outcome
        reason = outcome
    return _plan_header(header, complete, boundary, reason)


def _plan_whole(original: BinaryIO, header: bytes, complete: bool, whole_max: int, boundary: bytes) -> Returned | str:
    """The whole message as it is, or the reason it cannot be."""
    if not complete:
        return "its header is too long"
    scan = _Scan(boundary)
    original.seek(0)
    while chunk := original.read(CHUNK):
        scan.feed(chunk)
        if scan.size > whole_max:
            return f"it is larger than {_size_text(whole_max)}"
    scan.finish()
    if scan.found:
        raise BoundaryCollision
    if not scan.clean:
        return "it has lines too long or malformed to be attached as it is"
    if header.isascii():
        content_type: ContentType = "message/rfc822"
    elif _is_utf8(header):
        content_type = "message/global"
    else:
        return "its header holds 8-bit bytes that are not UTF-8"
    encoding: Encoding = "8bit" if scan.eightbit else "7bit"
    return Returned(content_type, encoding, True, scan.size)


def _plan_header(header: bytes, complete: bool, boundary: bytes, reason: str) -> Returned:
    scan = _Scan(boundary)
    scan.feed(header)
    scan.finish()
    content_type: ContentType
    encoding: Encoding
    if scan.clean and header.isascii():
        body, content_type, encoding = header, "text/rfc822-headers", "7bit"
    elif scan.clean and _is_utf8(header):
        body, content_type, encoding = header, "message/global-headers", "8bit"
    else:
        body, content_type, encoding = quoted_printable(header), "text/rfc822-headers", "quoted-printable"
        if boundary in body:
            raise BoundaryCollision
    if not complete:
        reason = reason or "its header is too long to be returned whole"
    return Returned(content_type, encoding, False, len(body), body, reason)


_QP_LITERAL: Final = frozenset(range(33, 127)) - {ord("=")}


def quoted_printable(data: bytes) -> bytes:
    """RFC 2045 §6.7 quoted-printable of `data`, whose line breaks are CRLF.

    Every octet other than printable ASCII (and `=`) is written `=XX`, so a
    bare CR or LF, a NUL or an 8-bit byte survives the trip exactly; a space
    or tab is literal unless it ends a line; lines are soft-broken at
    QP_WIDTH.  Output lines end in CRLF; a final line without CRLF stays
    without one.
    """
    out = bytearray()
    lines = data.split(b"\r\n")
    for n, line in enumerate(lines):
        width = 0
        last = len(line) - 1
        for i, byte in enumerate(line):
            if byte in _QP_LITERAL or (byte in (9, 32) and i != last):
                token = bytes((byte,))
            else:
                token = b"=%02X" % byte
            if width + len(token) > QP_WIDTH - 1:
                out += b"=\r\n"
                width = 0
            out += token
            width += len(token)
        if n != len(lines) - 1:
            out += b"\r\n"
    return bytes(out)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _size_text(octets: int) -> str:
    if octets % (1024 * 1024) == 0:
        return f"{octets // (1024 * 1024)} MiB"
    if octets % 1024 == 0:
        return f"{octets // 1024} KiB"
    return f"{octets} octets"
