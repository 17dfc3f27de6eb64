"""The one small error tree every part shares, and the SMTP reply it carries.

OpenSMTPD ends every job (lookup, delivery, relay, queue write) in *ok*,
*tempfail* or *permfail*; so do we.  Each error carries the `Reply` a client
or a bounce will see; `reason` is for the log only (maddy's habit: generic
text to the peer, detail to the administrator).

This module is a leaf: it imports nothing of ours, so the sans-IO protocol
machine, the tables and the agents can all share it (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: code, enhanced status code (RFC 3463) and text.

    `enhanced` is "" for the few replies that carry none (220 banner, 354).
    `lines` holds extra lines of a multi-line reply (EHLO keywords); `text` is
    the first line.
    """

    code: int
    enhanced: str = ""
    text: str = ""
    lines: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code out of range: {self.code}")
        for part in (self.text, *self.lines):
            if "\r" in part or "\n" in part:
                raise ValueError("reply text may not contain CR or LF")

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    def all_lines(self) -> list[str]:
        """Each line as sent, without CRLF: enhanced code prefixed when set."""
        texts = [self.text, *self.lines]
        out = []
        for i, text in enumerate(texts):
            sep = "-" if i < len(texts) - 1 else " "
            body = f"{self.enhanced} {text}" if self.enhanced and i == 0 else text
            out.append(f"{self.code}{sep}{body}".rstrip())
        return out

    def to_bytes(self) -> bytes:
        return "".join(line + "\r\n" for line in self.all_lines()).encode("utf-8")

    def __str__(self) -> str:
        return " ".join(part for part in (str(self.code), self.enhanced, self.text) if part)


class MailError(Exception):
    """A job that did not end in *ok*.  `reply` is what the peer sees."""

    def __init__(self, reply: Reply, reason: str = "") -> None:
        super().__init__(reason or reply.text)
        self.reply = reply
        self.reason = reason or reply.text


class TempFail(MailError):
    """4xx: keep the message, retry with backoff."""


class PermFail(MailError):
    """5xx: refuse now, or bounce."""


class LookupUnavailable(TempFail):
    """A table backend is down, slow or returned a malformed value: 451 4.3.0.

    Never "not found": a lookup that could not be answered must never be taken
    for an absent key (that would bounce mail during an outage).
    """

    def __init__(self, reason: str, reply: Reply | None = None) -> None:
        super().__init__(reply or Reply(451, "4.3.0", "Temporary failure"), reason)
