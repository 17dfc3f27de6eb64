"""What a session is built from and carries: the listener's shared context,
the EHLO offer, the transaction in progress, the local submitter.

Values, no I/O: apart from session.py so that the session's loop reads
alone, and so that inject.py and the daemon name them without the session.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Mapping

from postillion.config.model import Limits, ListenDecl
from postillion.errors import Reply
from postillion.lookup.auth import Authenticator
from postillion.lookup.expand import Delivery, Expander
from postillion.queue.envelope import DEFAULT_TTL
from postillion.queue.store import Incoming, QueueStore
from postillion.rules import Ruleset
from postillion.smtp import protocol as p
from postillion.smtp.headers import HeaderScan
from postillion.smtp.tuning import DEFAULT_TUNING, Tuning
from postillion.table.table import Table


@dataclass(frozen=True, slots=True)
class SessionContext:
    """What every session of one listener shares.

    `listen` None is a plain listener with every default (tests, the demo);
    `tls_context` is the listener's server context (STARTTLS or SMTPS);
    `authenticator` checks AUTH; `senders` is the `senders <t>` table.
    """

    hostname: str
    limits: Limits
    ruleset: Ruleset
    expander: Expander
    store: QueueStore   # hands committed envelopes to the scheduler itself (on_commit)
    listen: ListenDecl | None = None
    tls_context: ssl.SSLContext | None = None
    authenticator: Authenticator | None = None
    senders: Table | None = None
    hostnames: Table | None = None
    tuning: Tuning = DEFAULT_TUNING
    queue_ttl: float = DEFAULT_TTL      # `queue ttl`: an envelope's lifetime unless its action says


def features(decl: ListenDecl | None) -> p.Features:
    """The EHLO offer of a listener (docs/smtp.md)."""
    if decl is None:
        return p.ALL_EXTENSIONS
    return p.Features(
        starttls=(decl.tls or decl.tls_require) and not decl.smtps,
        tls_required=decl.tls_require and not decl.smtps,
        auth=bool(decl.auth), auth_required=decl.auth == "required",
        insecure_auth=decl.insecure_auth, dsn=not decl.no_dsn, smtputf8=True, chunking=True)


@dataclass(frozen=True, slots=True)
class Submitter:
    """The local user a `sendmail` submission comes from, as the kernel told
    the control socket (SO_PEERCRED): never anything the user wrote.  Its
    session writes a `Received: ... from userid UID` header, records `name`
    as the envelopes' `username` and logs both (smtp/inject.py)."""

    uid: int
    name: str


@dataclass(slots=True)
class Transaction:
    """The MAIL ... DATA/BDAT transaction in progress."""

    sender: str
    params: Mapping[str, str] = field(default_factory=dict)
    recipients: list[tuple[str, list[Delivery], Mapping[str, str]]] = field(default_factory=list)
    incoming: Incoming | None = None
    failed: Reply | None = None        # the queue file could not be created or written:
                                       # owed at the end of the data
    headers: HeaderScan | None = None
    held: bytearray | None = None      # header held back for `masquerade`


def protocol_limits(limits: Limits, submitter: Submitter | None = None) -> p.ProtocolLimits:
    """The machine's limits for one session.  A local submitter (`sendmail`)
    is not cut off after `max_rejected_rcpt` refusals: that limit stops a
    remote client probing for addresses, while a local user is known by its
    uid, and cutting its one submission short would turn its refused
    recipients into a temporary failure that cron retries forever."""
    rejected = limits.max_rejected_rcpt if submitter is None else \
        max(limits.max_rejected_rcpt, limits.max_rcpt + 1)
    return p.ProtocolLimits(
        max_line=limits.max_line, max_data_line=limits.max_data_line,
        max_message_size=limits.max_message_size, max_rcpt=limits.max_rcpt,
        max_mails=limits.max_mails, max_failed_commands=limits.max_failed_commands,
        max_auth_line=limits.max_auth_line, max_failed_auth=limits.max_failed_auth,
        max_rejected_rcpt=rejected)
