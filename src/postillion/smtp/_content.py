"""Reading message content: DATA up to its terminator, BDAT chunks by size.

Part of `protocol.py`'s machine, split the way h11 splits its own (its
`_readers.py`): while the machine is in State.DATA or reads a BDAT chunk,
`ServerProtocol._advance` calls `read_content` or `read_chunk` instead of
reading a command line.  They consume the machine's buffer and hand out
`DataChunk`, `DataEnd` and `BdatEnd` events; no I/O.

Content leaves in large chunks found with `bytes.find` over the buffer,
never line by line in Python (docs/architecture.md, "Performance shape"),
and no line longer than `max_data_line` is ever held.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from postillion.smtp._events import BdatEnd, DataChunk, DataEnd
from postillion.smtp._replies import LINE_TOO_LONG
from postillion.smtp._syntax import _STUFFED

if TYPE_CHECKING:
    from postillion.smtp.protocol import ServerProtocol


def read_content(proto: ServerProtocol) -> bool:
    """Hand out content up to the last complete line, or up to CRLF.CRLF.

    The terminator is a "." line ending in CRLF whose previous line also
    ended in CRLF (docs/smtp.md); it is found with one `find` over the
    buffer, as are the line ends and stuffed dots.  Only whole lines
    leave, so a partial terminator stays buffered for the next read.
    Returns False when more bytes are needed.
    """
    if proto._done:
        proto._done = False
        proto._events.append(DataEnd(proto._size, proto._size > proto.limits.max_message_size))
        return True
    buf, limit = proto._buf, proto.limits.max_data_line
    skip = 0
    if proto._prev_crlf and buf.startswith(b".\r\n"):
        end, skip = 0, 3
    else:
        term = buf.find(b"\r\n.\r\n", max(0, proto._scan - 1))
        if term >= 0:
            end, skip = term + 2, 3
        else:
            end = buf.rfind(b"\n", proto._scan) + 1
    fits = _lines_fit(proto, end)
    too_long = fits < end or (not skip and len(buf) - end >= limit)
    if fits:
        _emit(proto, fits)
    if too_long:
        proto._queue(LINE_TOO_LONG)
        proto._close("data line too long")
        return True
    if skip:
        proto._consume(skip)
        proto._done = True
        return True
    if fits:
        return True
    if proto._eof:
        proto._close("eof in data")
        return True
    proto._scan = len(buf)
    return False


def read_chunk(proto: ServerProtocol) -> bool:
    """Hand out BDAT octets as they come; BdatEnd (or the refusal) once
    all `size` are in.  Nothing in a chunk is a command or a terminator.

    Line ends are stored as for DATA (bare LF -> CRLF, bare CR -> space),
    a CR at a chunk's end waiting for the next chunk's first octet; there
    is no dot-stuffing to undo (RFC 3030 §2).
    """
    take = min(proto._bdat_left, len(proto._buf))
    if take:
        data = bytes(proto._buf[:take])
        proto._consume(take)
        proto._bdat_left -= take
        if proto._bdat_refusal is None:
            _chunk_content(proto, data, final=proto._bdat_left == 0 and proto._bdat_last)
        if proto._bdat_left:
            return True
    elif proto._bdat_left:
        if proto._eof:
            proto._close("eof in bdat")
            return True
        return False
    proto._bdat_left = -1
    if proto._bdat_last and proto._bdat_cr and proto._bdat_refusal is None:
        _chunk_content(proto, b"", final=True)
    if proto._bdat_refusal is not None:
        proto._refuse(f"BDAT {proto._bdat_chunk}".encode(), proto._bdat_refusal)
    else:
        too_big = proto._size > proto.limits.max_message_size
        proto._events.append(BdatEnd(proto._bdat_chunk, proto._size, proto._bdat_last, too_big))
    return True


def _chunk_content(proto: ServerProtocol, data: bytes, final: bool) -> None:
    if proto._bdat_cr:
        data = b"\r" + data
        proto._bdat_cr = False
    if not final and data.endswith(b"\r"):
        data = data[:-1]
        proto._bdat_cr = True
    if not data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n"):
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b" ").replace(b"\n", b"\r\n")
    before = proto._size
    proto._size += len(data)
    if data and proto._size <= proto.limits.max_message_size:
        proto._events.append(DataChunk(data))
    elif before <= proto.limits.max_message_size < proto._size:
        pass  # from here on read and dropped; BdatEnd says too_big


def _lines_fit(proto: ServerProtocol, end: int) -> int:
    """`end` if every line in buf[:end] is <= max_data_line, else where the
    first longer line starts.

    Steps a window of max_data_line bytes to the last LF inside it, so a
    chunk costs about two `rfind` calls per max_data_line, not one per line.
    """
    buf, limit, pos = proto._buf, proto.limits.max_data_line, 0
    while end - pos > limit:
        nl = buf.rfind(b"\n", pos, pos + limit)
        if nl < 0:
            return pos
        pos = nl + 1
    return end


def _emit(proto: ServerProtocol, n: int) -> None:
    """Consume buf[:n] (whole lines) and hand it out as one DataChunk.

    Fast path: only CRLF line ends and no line starting with "." -> the
    bytes go out as they are.  Otherwise bare LF -> CRLF, bare CR -> space,
    then one leading dot is removed from every line but a lone "." line.
    """
    buf = proto._buf
    lfs = buf.count(b"\n", 0, n)
    clean = buf.count(b"\r", 0, n) == lfs == buf.count(b"\r\n", 0, n)
    stuffed = buf[0] == 0x2E or buf.find(b"\n.", 0, n) >= 0
    proto._prev_crlf = n >= 2 and buf[n - 2] == 0x0D
    with memoryview(buf) as view:
        chunk = view[:n].tobytes()
    proto._consume(n)
    if not clean:
        chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b" ").replace(b"\n", b"\r\n")
    if stuffed:
        if chunk.startswith(b".") and not chunk.startswith(b".\r\n"):
            chunk = chunk[1:]
        chunk = _STUFFED.sub(b"\n", chunk)
    before, limit = proto._size, proto.limits.max_message_size
    proto._size += len(chunk)
    if before > limit:
        return  # already too big: read and dropped
    if proto._size > limit:
        # Hand out the whole lines that still fit, so the cut does not
        # depend on how the reads fell; the rest is dropped and DataEnd
        # says too_big.
        chunk = chunk[: chunk.rfind(b"\n", 0, limit - before) + 1]
    if chunk:
        proto._events.append(DataChunk(chunk))
