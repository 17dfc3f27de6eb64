"""The message headers a session reads or writes as content goes by.

`Received:` (docs/smtp.md, Headers added), the scan of the client's header section (loops,
a malformed first line, missing `Date:`/`Message-ID:`), the `Date:` and
`Message-ID:` a submission gets when it lacks them, and the `From:` rewrite
of `senders <t> masquerade`.  Pure functions over bytes: no I/O, so each
is tested alone; client text is reduced to printable ASCII before it enters
a header, so a CR/LF in a HELO or a user name can never start a new field.
"""

from __future__ import annotations

import secrets
from email.utils import formatdate
from typing import Sequence


def masquerade_from(header: bytes, sender: str) -> bytes:
    """Rewrite the address of the From: field to `sender` (`senders <t>
    masquerade`, docs/configuration.md), keeping a display name written before `<`.

    `header` is whole header lines (CRLF-terminated); a folded From: is
    unfolded into one line.  Other fields are left as they are.
    """
    lines = header.split(b"\r\n")
    out, i = [], 0
    address = sender.encode("utf-8")
    while i < len(lines):
        line = lines[i]
        if line[:5].lower() != b"from:":
            out.append(line)
            i += 1
            continue
        j = i + 1
        while j < len(lines) and lines[j][:1] in (b" ", b"\t"):
            j += 1
        value = b" ".join(part.strip() for part in [line[5:], *lines[i + 1 : j]]).strip()
        name = value[: value.find(b"<")].strip() if b"<" in value else b""
        out.append(b"From: " + (name + b" <" + address + b">" if name else address))
        i = j
    return b"\r\n".join(out)


class HeaderScan:
    """Watches the client's header section as content goes by (docs/smtp.md).

    Counts `Received:` fields (a mail loop at `Limits.max_hops`: 554 5.4.6),
    notes a first header line starting with a blank (554 5.6.0) and whether
    `Date:` and `Message-ID:` are there.  Stops at the empty line ending the
    header, or after `limit` octets, so the body is never scanned line by line.
    """

    __slots__ = ("hops", "bad_first_line", "done", "has_date", "has_message_id",
                 "_tail", "_seen", "_limit")

    def __init__(self, limit: int) -> None:
        self.hops = 0
        self.bad_first_line = False
        self.done = False
        self.has_date = False
        self.has_message_id = False
        self._tail = b""
        self._seen = 0
        self._limit = limit

    def feed(self, data: bytes) -> int | None:
        """Scan one piece of content; returns where in `data` the empty line
        ending the header starts, when it is in this piece (else None)."""
        if self.done or not data:
            return None
        if self._seen == 0 and not self._tail:
            self.bad_first_line = data[:1] in (b" ", b"\t")
        self._seen += len(data)
        tail = self._tail
        lines = (tail + data).split(b"\r\n")
        self._tail = lines.pop()
        pos = 0
        for line in lines:
            if not line:
                self.done = True
                return pos - len(tail) if pos >= len(tail) else None
            name = line[:11].lower()
            if name.startswith(b"received:"):
                self.hops += 1
            elif name.startswith(b"date:"):
                self.has_date = True
            elif name.startswith(b"message-id:"):
                self.has_message_id = True
            pos += len(line) + 2
        if self._seen > self._limit:
            self.done = True
        return None


def clean(text: str) -> str:
    """Printable ASCII only, `?` for the rest: header text from the client."""
    return "".join(ch if 0x21 <= ord(ch) < 0x7F else "?" for ch in text)


def received_header(helo: str, peer: str, hostname: str, msgid: int, rcpts: Sequence[str],
                    extended: bool, *, rdns: str = "<unknown>", tls: tuple[str, str] | None = None, user: str | None = None,
                    show_auth: bool = False, smtputf8: bool = False, mask_src: bool = False) -> bytes:
    """The `Received:` trace header (RFC 5321 §4.4; docs/smtp.md, Headers added).

    `with` is SMTP/ESMTP (UTF8SMTP under SMTPUTF8), + S on TLS, + A when
    authenticated (RFC 3848); the TLS clause is `(version:cipher:bits:
    YES|NO)`, `auth=yes user=NAME` follows with `received-auth`.  HELO and
    user name non-printables become `?`, so no CR/LF can start a new header.
    """
    literal = f"IPv6:{peer}" if ":" in peer else peer
    proto = ("UTF8SMTP" if smtputf8 else "ESMTP" if extended else "SMTP")
    if tls is not None:
        proto += "S"
    if user is not None:
        proto += "A"
    lines = []
    by = f"by {hostname} (Postillion) with {proto} id {msgid:08x}"
    if mask_src:
        lines.append(f"Received: {by}")
    else:
        lines.append(f"Received: from {clean(helo) or 'unknown'} ({clean(rdns) or '<unknown>'} [{literal}])")
        lines.append(f"\t{by}")
    if tls is not None:
        lines.append(f"\t({tls[0]}:{tls[1]})")
    if user is not None and show_auth:
        lines.append(f"\tauth=yes user={clean(user)}")
    return _received_tail(lines, rcpts)


def received_local(hostname: str, msgid: int, rcpts: Sequence[str], uid: int, user: str) -> bytes:
    """The `Received:` of a local submission (`sendmail`), as Postfix's
    pickup writes it: no client to name, but the submitting user, taken
    from the kernel's peer credentials (docs/smtp.md, Headers added)::

        Received: by mx.example.org (Postillion, from userid 1000 user alice)
            id 1a2b3c4d
            for <bob@example.org>;
            Sat, 06 Dec 2026 14:01:02 +0100
    """
    lines = [f"Received: by {hostname} (Postillion, from userid {uid} user {clean(user)})",
             f"\tid {msgid:08x}"]
    return _received_tail(lines, rcpts)


def _received_tail(lines: list[str], rcpts: Sequence[str]) -> bytes:
    """`for <rcpt>` when there is one recipient (naming more would tell each
    who the others are), then the date; the header's lines joined."""
    if len(rcpts) == 1:
        lines.append(f"\tfor <{rcpts[0]}>;")
    else:
        lines[-1] += ";"
    lines.append(f"\t{formatdate(localtime=True)}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


def missing_headers(headers: HeaderScan, hostname: str) -> bytes:
    """`Date:` and `Message-ID: <16hex@HOSTNAME>` where the header lacks them."""
    out = b""
    if not headers.has_date:
        out += f"Date: {formatdate(localtime=True)}\r\n".encode("ascii")
    if not headers.has_message_id:
        out += f"Message-ID: <{secrets.token_hex(8)}@{hostname}>\r\n".encode("ascii", "replace")
    return out
