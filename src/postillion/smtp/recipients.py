"""Who the client is and whom it writes to: the client's PTR name, a path
as the session looks it up, and the one RCPT decision (rules, then
expansion) the session and `postillion route` share.
"""

from __future__ import annotations

import asyncio
import re
import socket
import unicodedata
from dataclasses import dataclass, field

from postillion.config.model import MatchDecl
from postillion.errors import LookupUnavailable, MailError, Reply
from postillion.lookup.expand import Delivery, Expander, Step
from postillion.rules import Ruleset, SessionFacts
from postillion.smtp import protocol as p

REPLY_RCPT_OK = Reply(250, "2.1.5", "Destination address valid: Recipient ok")

UNKNOWN_HOST = "<unknown>"
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\Z")


async def reverse_dns(address: str, timeout: float) -> str:
    """The client's PTR name, for the log and `Received:` (docs/logs.md, docs/smtp.md).

    Through the system resolver (so /etc/hosts answers for loopback), bounded
    by `timeout`; no name, a failure, a timeout, or a name that is not a
    plain host name (a PTR record is the client's to write) all give
    `<unknown>`.  Not forward-confirmed: this name is only shown, never
    trusted (`from rdns` comes later, with its own check).
    """
    if address == "local":
        return "localhost"
    loop = asyncio.get_running_loop()
    try:
        name, _ = await asyncio.wait_for(
            loop.getnameinfo((address, 0), socket.NI_NAMEREQD), timeout)
    except (OSError, asyncio.TimeoutError, UnicodeError):
        return UNKNOWN_HOST
    name = name.rstrip(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        return UNKNOWN_HOST
    return name.lower()


def session_address(path: p.Path, hostname: str) -> str:
    """A path as the session looks it up: without a domain it gets our
    hostname (`<postmaster>`, docs/smtp.md).

    SMTPUTF8 (RFC 6531): a UTF-8 address is NFC-normalised, and its
    domain written as A-labels, so lookups see one spelling of it.
    """
    local, domain = path.local, path.domain or hostname
    if not (local.isascii() and domain.isascii()):
        local = unicodedata.normalize("NFC", local)
        domain = unicodedata.normalize("NFC", domain)
        if not domain.isascii() and not domain.startswith("["):
            try:
                domain = domain.encode("idna").decode("ascii")
            except UnicodeError:
                pass  # not a valid IDN: kept as sent, matches no table
    return f"{local}@{domain}"


@dataclass(frozen=True, slots=True)
class RcptDecision:
    """What RCPT gets for one recipient: the reply, the rule that decided
    (None: no rule matched), the final deliveries when accepted, and the
    administrator's why when refused (`lookup_error`: a table could not
    answer).  One function makes it, for the session and `postillion route`."""

    reply: Reply
    rule: MatchDecl | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    reason: str = ""
    lookup_error: bool = False


async def rcpt_decision(ruleset: Ruleset, expander: Expander, facts: SessionFacts,
                        sender: str, rcpt: str, trace: Step | None = None) -> RcptDecision:
    """The rules, then expansion (docs/architecture.md, The flow of one
    message): `550 5.7.1` when no rule accepts, the expansion's own reply
    when it fails, `451 4.3.0` when a table cannot answer.  `trace` records
    the expansion (lookup/expand.py)."""
    rule = None
    try:
        rule = await ruleset.first_rule(facts, sender, rcpt)
        action = ruleset.action_of(rule)
        if action is None:
            return RcptDecision(Reply(550, "5.7.1", f"Invalid recipient: <{rcpt}>"), rule)
        deliveries = await expander.expand(rcpt, action, trace)
        return RcptDecision(REPLY_RCPT_OK, rule, deliveries)
    except LookupUnavailable as e:
        return RcptDecision(Reply(451, "4.3.0", f"Temporary failure: <{rcpt}>"), rule,
                            reason=e.reason, lookup_error=True)
    except MailError as e:
        return RcptDecision(e.reply, rule, reason=e.reason if e.reason != e.reply.text else "")
