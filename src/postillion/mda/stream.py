"""The queued message as every local method reads it: LF line ends, and the
`Delivered-To:` loop check.

The queue stores CRLF line ends (docs/smtp.md); a Maildir, an mbox and a
command's standard input get the local convention, LF, which every reader
(Dovecot, mutt, procmail) expects.  The message is streamed in chunks,
never held whole in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO, Final

CHUNK: Final = 64 * 1024
#: How much of a message's header section the loop check reads: headers past
#: this are not looked at (a message whose header section is this long is
#: not one a loop produced).
MAX_HEADER_SCAN: Final = 1024 * 1024


def lf_chunks(message: BinaryIO, chunk: int = CHUNK) -> Iterator[bytes]:
    """The message's content in chunks, each CRLF made LF (a lone CR kept)."""
    carry = b""
    while data := message.read(chunk):
        data = carry + data
        # A CR at the end of a chunk may start a CRLF split by the read.
        carry = b"\r" if data.endswith(b"\r") else b""
        out = data[: len(data) - len(carry)].replace(b"\r\n", b"\n")
        if out:
            yield out
    if carry:
        yield carry


def _header_section(message: BinaryIO, limit: int) -> bytes:
    head = b""
    while len(head) < limit:
        chunk = message.read(min(CHUNK, limit - len(head)))
        if not chunk:
            break
        head += chunk
        end = head.find(b"\n\r\n") if b"\r\n\r\n" in head else head.find(b"\n\n")
        if end >= 0:
            return head[:end]
    return head


def has_field(message: BinaryIO, name: str, value: str, limit: int = MAX_HEADER_SCAN) -> bool:
    """Whether the header section holds `name: value` (both case-blind,
    blanks around the value ignored).  Reads at most `limit` octets."""
    wanted_name = name.lower().encode()
    wanted = value.strip().lower().encode("utf-8", "surrogateescape")
    for line in _header_section(message, limit).split(b"\n"):
        field, colon, found = line.partition(b":")
        if colon and field.strip().lower() == wanted_name and found.strip().lower() == wanted:
            return True
    return False


def is_junk(message: BinaryIO) -> bool:
    """`X-Spam: yes`, as a filter before us marks spam: the maildir `junk`
    option files it in the Junk folder (docs/configuration.md)."""
    return has_field(message, "X-Spam", "yes")


def delivered_to(message: BinaryIO, dest: str, limit: int = MAX_HEADER_SCAN) -> bool:
    """Whether the header section holds `Delivered-To: dest` (case-blind).

    Every local delivery adds that line; finding it again means the message
    came back to the same recipient (a `.forward` or a command sending it
    on): OpenSMTPD's "Loop detected", a permanent failure
    (docs/configuration.md, Commands).  Reads at most `limit` octets.
    """
    return has_field(message, "Delivered-To", dest, limit)
