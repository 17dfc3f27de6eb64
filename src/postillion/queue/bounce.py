"""Bounces: delivery status notifications (RFC 3464) and when to send them.

A DSN tells the sender of a message what became of it: it `failed` for some
recipients (a permanent error, or the envelope expired), is `delayed` (still
being retried after a `bounce warn-interval`), or was `delivered` or
`relayed` (only when the sender asked, with `NOTIFY=SUCCESS`).  What a DSN
looks like and when one is sent is described in docs/architecture.md
(Bounces).

The policy (`wants_dsn`, `due_warning`, `warned`) is separate from the
builder (`write_dsn`, `build_dsn`): the scheduler asks the policy, groups
the envelopes of one message and one sender, and queues what the builder
writes as a new message from the null sender `<>`.

Everything here is synchronous and does no I/O but reading the original
message from the file it is handed.  Nothing a remote server said reaches
the DSN unchecked: diagnostics are cut to printable text, folded, and
encoded where they are not ASCII, so the DSN is a valid message whatever
the peer sent: CRLF line ends only, no line over 998 octets.
"""

from __future__ import annotations

import re
import secrets
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from io import BytesIO
from typing import BinaryIO, Final, Literal

from postillion.queue.envelope import Envelope, format_msgid
from postillion.queue.returned import (
    LINE_MAX,
    BoundaryCollision,
    Returned,
    plan,
    quoted_printable,
)

Kind = Literal["failed", "delayed", "delivered", "relayed"]
KINDS: Final = ("failed", "delayed", "delivered", "relayed")

RETURN_WHOLE_MAX: Final = 1024 * 1024
"""Largest message (octets) a `failed` DSN returns whole when the sender
did not say RET=; above it, only the header."""

RETURN_FULL_MAX: Final = 35 * 1024 * 1024
"""Largest message (octets) returned whole on RET=FULL (the default
`smtp max-message-size`); above it, only the header."""

FOLD_WIDTH: Final = 78
"""Lines the DSN writes itself are folded or wrapped at this width where
they can be (RFC 5322 §2.1.1's "SHOULD"); none ever exceeds LINE_MAX."""

TEXT_MAX: Final = 2000
"""Characters of one diagnostic, address or identifier kept in a DSN."""

BOUNDARY_TRIES: Final = 4
"""Fresh random boundaries tried before giving up (a collision with 128
random bits does not happen; the bound only keeps the loop finite)."""

_ESC: Final = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_SMTP_REPLY: Final = re.compile(r"[2-5]\d\d(?:[ -]|$)")
_HOSTNAME: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,253})")
_CLASS_OF_KIND: Final = {"failed": (4, 5), "delayed": (4,), "delivered": (2,), "relayed": (2,)}

# -- policy ---------------------------------------------------------------------


def wants_dsn(envelope: Envelope, kind: Kind) -> bool:
    """Whether the sender of `envelope` gets a DSN of this `kind` (RFC 3461 §4.1).

    Never for the null sender, nor for a message flagged `bounce` (a DSN
    about a DSN could loop).  NOTIFY=NEVER: never.  Without NOTIFY, failures
    and delays are reported and successes are not; with NOTIFY, exactly the
    listed ones (FAILURE -> failed, DELAY -> delayed, SUCCESS -> delivered
    and relayed).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown DSN kind: {kind!r}")
    if not envelope.sender or "bounce" in envelope.flags or envelope.type == "bounce":
        return False
    notify = envelope.dsn_notify
    if "NEVER" in notify:
        return False
    if kind == "failed":
        return not notify or "FAILURE" in notify
    if kind == "delayed":
        return not notify or "DELAY" in notify
    return "SUCCESS" in notify


def due_warning(envelope: Envelope, next_attempt: float, warn_intervals: Sequence[float]) -> float | None:
    """The `bounce warn-interval` to report now in a `delayed` DSN, or None.

    Called after a temporary failure, with the time of the next attempt.
    An interval is due when `ctime + interval <= next_attempt` (it will have
    passed before we try again) and it was not reported yet; several due at
    once make one DSN, for the largest.  None when the sender does not want
    delays (`wants_dsn`), or when the envelope expires before the interval
    ends (its `failed` DSN says it all).

    What was reported is remembered in the envelope (see `warned`):
    `bounce_delay` holds the largest interval already reported (0: none),
    `last_bounce` the time that DSN was queued.
    """
    if not wants_dsn(envelope, "delayed"):
        return None
    due = [
        interval for interval in warn_intervals
        if interval > envelope.bounce_delay
        and envelope.ctime + interval <= next_attempt
        and envelope.ctime + interval < envelope.expires
    ]
    return max(due) if due else None


def warned(envelope: Envelope, interval: float, now: float) -> Envelope:
    """`envelope` as it must be saved once the `delayed` DSN for `interval`
    is queued, so `due_warning` does not report that interval again."""
    return envelope.replace(bounce_delay=max(envelope.bounce_delay, interval), last_bounce=now)


# -- builder --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DsnInfo:
    """What the queue needs to know of a DSN it writes.

    `to` is the address it goes to (the original sender).  `eightbit`: it
    holds 8-bit octets, so it must be relayed with BODY=8BITMIME.
    `smtputf8`: its header holds UTF-8 (the sender's address is not ASCII,
    RFC 6532), so its envelope must carry the `smtputf8` flag.  `returned`
    says what of the original it carries.
    """

    kind: Kind
    to: str
    message_id: str
    size: int
    eightbit: bool
    smtputf8: bool
    returned: Literal["message", "headers"]


def build_dsn(
    kind: Kind,
    envelopes: Sequence[Envelope],
    original: BinaryIO,
    *,
    hostname: str,
    now: float,
    arrival: float | None = None,
    remote_mta: Mapping[int, str] | None = None,
) -> bytes:
    """The DSN as bytes; see `write_dsn` for the arguments."""
    out = BytesIO()
    write_dsn(out.write, kind, envelopes, original, hostname=hostname, now=now, arrival=arrival,
              remote_mta=remote_mta)
    return out.getvalue()


def write_dsn(
    write: Callable[[bytes], object],
    kind: Kind,
    envelopes: Sequence[Envelope],
    original: BinaryIO,
    *,
    hostname: str,
    now: float,
    arrival: float | None = None,
    remote_mta: Mapping[int, str] | None = None,
) -> DsnInfo:
    """Write one DSN of `kind` about `envelopes` to `write`, in pieces.

    `envelopes` belong to one message and one sender (the caller groups
    them), each carrying its outcome in `esc_class`, `esc_code` and
    `errorline`, and each must want this DSN (`wants_dsn`): ValueError
    otherwise.  `original` is that message, a seekable binary file read from
    offset 0 (the whole message is never held in memory).  `hostname` is
    the reporting host (`Reporting-MTA`, `MAILER-DAEMON@`, `Message-ID`);
    `now` the epoch time for `Date:`; `arrival` the time the message
    arrived (default: the earliest ctime); `remote_mta` maps an evpid to
    the server that gave its outcome, when known.

    The CRLF message is written with several calls, so `write` may be
    `Incoming.write` of the queue.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown DSN kind: {kind!r}")
    _check_group(kind, envelopes)
    if not _HOSTNAME.fullmatch(hostname):
        raise ValueError(f"not a host name: {hostname!r}")
    first = envelopes[0]
    arrival = min(e.ctime for e in envelopes) if arrival is None else arrival
    remote_mta = remote_mta or {}
    whole, whole_max = _return_whole(kind, first.dsn_ret)
    for _ in range(BOUNDARY_TRIES):
        boundary = f"postillion-{secrets.token_hex(16)}"
        try:
            returned = plan(original, whole=whole, whole_max=whole_max, boundary=boundary.encode("ascii"))
            text, text_encoding = _text_part(kind, envelopes, hostname, now, arrival, returned)
            status = _status_part(kind, envelopes, hostname, arrival, remote_mta)
            if boundary.encode("ascii") in text + status:
                raise BoundaryCollision
        except BoundaryCollision:
            continue
        break
    else:
        raise RuntimeError("no MIME boundary found that the content does not hold")

    message_id = f"<{secrets.token_hex(8)}@{hostname}>"
    eightbit = returned.eightbit
    head = _header(kind, first.sender, hostname, now, message_id, boundary, eightbit)
    delimiter = b"\r\n--" + boundary.encode("ascii")
    pieces = [
        head,
        b"This is a MIME-encapsulated delivery status notification.\r\n",
        delimiter[2:] + b"\r\n",
        f"Content-Type: text/plain; charset={'us-ascii' if text_encoding == '7bit' else 'utf-8'}\r\n"
        f"Content-Transfer-Encoding: {text_encoding}\r\n"
        "Content-Description: Notification\r\n\r\n".encode("ascii"),
        text,
        delimiter + b"\r\n",
        b"Content-Type: message/delivery-status\r\nContent-Description: Delivery report\r\n\r\n",
        status,
        delimiter + b"\r\n",
        f"Content-Type: {returned.content_type}\r\n"
        f"Content-Transfer-Encoding: {returned.encoding}\r\n"
        f"Content-Description: {'Message' if returned.whole else 'Message header'}\r\n\r\n".encode("ascii"),
    ]
    size = 0
    for piece in pieces:
        write(piece)
        size += len(piece)
    returned.write_to(write, original)
    tail = delimiter + b"--\r\n"
    write(tail)
    size += returned.size + len(tail)
    return DsnInfo(
        kind=kind, to=first.sender, message_id=message_id, size=size, eightbit=eightbit,
        smtputf8=not first.sender.isascii(), returned="message" if returned.whole else "headers",
    )


def _check_group(kind: Kind, envelopes: Sequence[Envelope]) -> None:
    if not envelopes:
        raise ValueError("a DSN needs at least one envelope")
    first = envelopes[0]
    for envelope in envelopes:
        if envelope.msgid != first.msgid or envelope.sender != first.sender:
            raise ValueError("one DSN reports on one message of one sender")
        if not wants_dsn(envelope, kind):
            raise ValueError(f"envelope {envelope.id:016x} does not want a {kind} DSN")


def _return_whole(kind: Kind, ret: str) -> tuple[bool, int]:
    """Whether the original is returned whole, and up to which size.

    Only failures return it (RFC 3461 §4.3: delays and successes carry the
    header); RET=HDRS never, RET=FULL up to RETURN_FULL_MAX, no RET up to
    RETURN_WHOLE_MAX."""
    if kind != "failed" or ret == "HDRS":
        return False, 0
    return True, RETURN_FULL_MAX if ret == "FULL" else RETURN_WHOLE_MAX


def _header(kind: Kind, sender: str, hostname: str, now: float, message_id: str, boundary: str,
            eightbit: bool) -> bytes:
    """The DSN's own header.  `To:` holds the sender's address as it is
    (UTF-8 when it is not ASCII, RFC 6532: DsnInfo.smtputf8 says so)."""
    lines = [
        f"From: Mailer Daemon <MAILER-DAEMON@{hostname}>",
        *_fold("To", f"<{_clean(sender, keep_unicode=True)}>"),
        f"Subject: Delivery status notification: {kind}",
        f"Date: {formatdate(now, localtime=True)}",
        f"Message-ID: {message_id}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f' boundary="{boundary}"',
        f"Content-Transfer-Encoding: {'8bit' if eightbit else '7bit'}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


# -- the human part -------------------------------------------------------------

_INTRO: Final = {
    "failed": "Your message could not be delivered to the recipients below; "
              "the mail system has given up on it.",
    "delayed": "Your message has not been delivered yet to the recipients below, "
               "{age} after it arrived.  The mail system keeps trying until {until}; "
               "you need not send it again.",
    "delivered": "Your message was delivered to the recipients below.",
    "relayed": "Your message was passed on for the recipients below to a mail server "
               "that does not send delivery notifications: you may hear no more about it.",
}
_DEFAULT_DIAGNOSTIC: Final = {
    "failed": "delivery failed",
    "delayed": "delivery delayed, still trying",
    "delivered": "delivered",
    "relayed": "relayed",
}


def _text_part(kind: Kind, envelopes: Sequence[Envelope], hostname: str, now: float, arrival: float,
               returned: Returned) -> tuple[bytes, str]:
    """The notification for a person: what happened, one `address:
    diagnostic` line per recipient, what is attached.  ASCII goes 7bit;
    anything else (a UTF-8 address, a server's UTF-8 text) as UTF-8 in
    quoted-printable, so this part never needs 8BITMIME."""
    until = max(e.expires for e in envelopes)
    intro = _INTRO[kind].format(age=_duration(now - arrival), until=formatdate(until, localtime=True))
    lines = [f"This is the mail system at {hostname}.", ""]
    lines += textwrap.wrap(intro, FOLD_WIDTH - 2) + [""]
    for envelope in envelopes:
        final = _final_address(envelope)
        who = final if envelope.rcpt == final else f"{final} (expanded from {envelope.rcpt})"
        _, diagnostic = _outcome(kind, envelope)
        line = f"{_clean(who, keep_unicode=True)}: {_clean(diagnostic or _DEFAULT_DIAGNOSTIC[kind], True)}"
        lines += textwrap.wrap(line, FOLD_WIDTH - 2, initial_indent="    ", subsequent_indent="        ",
                               break_on_hyphens=False)
    lines.append("")
    if returned.whole:
        lines.append("Your message is attached below the report.")
    else:
        because = f", as {returned.reason}" if returned.reason else ""
        lines += textwrap.wrap(f"The header of your message is attached below the report{because}.",
                               FOLD_WIDTH - 2)
    text = "\r\n".join(lines) + "\r\n"
    if text.isascii():
        return text.encode("ascii"), "7bit"
    return quoted_printable(text.encode("utf-8")), "quoted-printable"


# -- the machine part -----------------------------------------------------------


def _status_part(kind: Kind, envelopes: Sequence[Envelope], hostname: str, arrival: float,
                 remote_mta: Mapping[int, str]) -> bytes:
    """The `message/delivery-status` body (RFC 3464 §2): per-message
    fields, then one block per recipient.  Always 7-bit: addresses that
    are not ASCII are written as RFC 6533 `utf-8` xtext."""
    first = envelopes[0]
    lines = [f"Reporting-MTA: dns; {hostname}", f"X-Postillion-Queue-ID: {format_msgid(first.msgid)}"]
    if first.dsn_envid:  # stored xtext-decoded (RFC 3461 §6.3 a)
        lines += _fold("Original-Envelope-Id", _clean(first.dsn_envid))
    lines.append(f"Arrival-Date: {formatdate(arrival, localtime=True)}")
    for envelope in envelopes:
        lines.append("")
        if envelope.dsn_orcpt:  # stored `type;address`, xtext-decoded (RFC 3461 §6.3 e)
            lines += _fold("Original-Recipient", _clean(envelope.dsn_orcpt))
        lines += _fold("Final-Recipient", _typed_address(_final_address(envelope)))
        status, diagnostic = _outcome(kind, envelope)
        lines.append(f"Action: {kind}")
        lines.append(f"Status: {status}")
        mta = remote_mta.get(envelope.id, "")
        if mta:
            lines += _fold("Remote-MTA", f"dns; {_clean(mta)}")
        if diagnostic:
            kind_of = "smtp" if _SMTP_REPLY.match(diagnostic) else "X-Postillion"
            lines += _fold("Diagnostic-Code", f"{kind_of}; {_clean(diagnostic)}")
        if envelope.last_try:
            lines.append(f"Last-Attempt-Date: {formatdate(envelope.last_try, localtime=True)}")
        if kind == "delayed":
            lines.append(f"Will-Retry-Until: {formatdate(envelope.expires, localtime=True)}")
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def _outcome(kind: Kind, envelope: Envelope) -> tuple[str, str]:
    """The status code and diagnostic to report for `envelope`.

    The envelope's own (`esc_code`, `errorline`) when its class fits the
    kind -- an envelope delivered after temporary failures still holds the
    last 4xx, which must not appear in a "delivered" DSN -- else the kind's
    generic code (5.0.0, 4.0.0, 2.0.0) and no diagnostic.  An expired
    envelope keeps its 4.4.7 in a "failed" DSN, as RFC 3463 intends."""
    classes = _CLASS_OF_KIND[kind]
    if envelope.esc_class in classes and _ESC.fullmatch(envelope.esc_code) \
            and int(envelope.esc_code[0]) == envelope.esc_class:
        return envelope.esc_code, envelope.errorline
    return f"{classes[-1]}.0.0", ""


def _final_address(envelope: Envelope) -> str:
    """The address delivery was last attempted to: `dest`, or `rcpt` when
    the expanded destination is a bare local user with no domain."""
    return envelope.dest if "@" in envelope.dest else envelope.rcpt


def _typed_address(address: str) -> str:
    """`rfc822;addr`, or RFC 6533's `utf-8;` xtext form for an address that
    is not ASCII (the 7-bit form, valid in message/delivery-status)."""
    if address.isascii():
        return f"rfc822;{_clean(address)}"
    return "utf-8;" + "".join(_utf8_xtext_char(c) for c in address[:TEXT_MAX])


def _utf8_xtext_char(char: str) -> str:
    code = ord(char)
    if 0x21 <= code <= 0x7E and char not in "\\+=":
        return char
    if char in " \\+=" or (code >= 0x80 and not 0xD800 <= code <= 0xDFFF):
        return f"\\x{{{code:X}}}"
    return "?"  # controls and lone surrogates have no encoding; never in a valid address


def _clean(text: str, keep_unicode: bool = False) -> str:
    """`text` as one line of printable characters, at most TEXT_MAX long:
    every other character (control, tab, lone surrogate, and without
    `keep_unicode` anything not ASCII) becomes `?`."""
    out = []
    for char in text[:TEXT_MAX]:
        code = ord(char)
        if 0x20 <= code <= 0x7E or (keep_unicode and char.isprintable() and code >= 0x80
                                    and not 0xD800 <= code <= 0xDFFF):
            out.append(char)
        else:
            out.append("?")
    return "".join(out).strip()


def _fold(name: str, value: str) -> list[str]:
    """`Name: value` as header lines: folded at spaces to FOLD_WIDTH where
    the value allows.  A word too long for any line (longer than anything a
    valid address or reply holds) is split outright, rather than writing a
    line over LINE_MAX octets, which would break the whole message."""
    lines: list[str] = []
    current = f"{name}:"
    for word in value.split(" "):
        for piece in _pieces(word, LINE_MAX - 40):  # room for the longest field name
            if current != f"{name}:" and len(current) + 1 + len(piece) > FOLD_WIDTH:
                lines.append(current)
                current = " " + piece
            else:
                current += " " + piece
    lines.append(current)
    return lines


def _pieces(word: str, octets: int) -> list[str]:
    """`word` cut into pieces of at most `octets` octets in UTF-8."""
    if len(word.encode("utf-8", "replace")) <= octets:
        return [word]
    pieces: list[str] = []
    piece: list[str] = []
    size = 0
    for char in word:
        width = len(char.encode("utf-8", "replace"))
        if size + width > octets:
            pieces.append("".join(piece))
            piece, size = [], 0
        piece.append(char)
        size += width
    pieces.append("".join(piece))
    return pieces


def _duration(seconds: float) -> str:
    """`3 days 4 hours`, `2 hours 5 minutes`, `10 minutes`: for people."""
    minutes = max(0, int(seconds // 60))
    days, minutes = divmod(minutes, 1440)
    hours, minutes = divmod(minutes, 60)
    units = [(days, "day"), (hours, "hour"), (minutes, "minute")]
    parts = [f"{n} {unit}{'s' if n != 1 else ''}" for n, unit in units if n]
    return " ".join(parts[:2]) or "less than a minute"
