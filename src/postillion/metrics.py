"""Every Prometheus metric of the daemon, in one leaf module (docs/metrics.md).

One home, so each metric is declared once with its help text and labels,
and the parts that count (`table`, `smtp`, `queue`, `mta`) need no arrow
to each other: this module imports nothing of ours, only
`prometheus_client`, and everyone may import it (docs/architecture.md,
Who may import whom).

Across processes the counts meet through prometheus_client's multiprocess
mode: when `metrics listen on` is configured the parent names a directory
in each role's environment (`POSTILLION_METRICS_DIR`, daemon/exporter.py),
every role writes its values to its own memory-mapped files there, and the
queue process sums them when scraped.  prometheus_client picks its mode
from `PROMETHEUS_MULTIPROC_DIR` when it is first imported -- here, before
any metric exists -- so this module sets that variable from ours, or
clears it: a stray one in the administrator's shell must neither switch
the parent or `postillion check` to files in some directory nor fail
them.  Without ours (no `metrics` statement, the in-process tests,
`check`) the objects below count in the process and nobody reads them.

They are the daemon's only counters: `ctl show stats` and `monitor` read
this process's values of these same objects (postillion/stats.py names
them as smtpctl does), so an event is counted once, by one call here.

Counting is meant to be cheap: one `inc` or `observe` per event (a
session, a RCPT, a lookup, a group commit), a few microseconds, never per
octet.  Label values come from small fixed sets (a backend name, an
enhanced status code, a result), never from a client's input.
"""

from __future__ import annotations

import os
from typing import Final

#: The environment variable by which the parent hands its roles the
#: directory of the metrics files (daemon/exporter.py sets it).
DIR_ENV: Final = "POSTILLION_METRICS_DIR"
#: prometheus_client's own names for it (the second is its old spelling).
_CLIENT_ENV: Final = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")

if os.environ.get(DIR_ENV):
    os.environ[_CLIENT_ENV[0]] = os.environ[DIR_ENV]
    os.environ.pop(_CLIENT_ENV[1], None)
else:
    for _name in _CLIENT_ENV:
        os.environ.pop(_name, None)

from prometheus_client import Counter, Gauge, Histogram  # noqa: E402  (after the mode is set)

#: Table lookups answer from memory in microseconds and from a database in
#: milliseconds; LOOKUP_TIMEOUT (10 s) is the last bucket that matters.
LOOKUP_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                         0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: A group commit is a few flushes: sub-millisecond on a RAM disk or a
#: disk with a write cache, tens of milliseconds on a plain disk.
COMMIT_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                         0.5, 1.0, 2.5, 5.0, 10.0)

# -- smtp processes ------------------------------------------------------------

#: The `family` label of postillion_smtp_sessions_total: the client's
#: address family, `local` for an injection (sendmail, a bounce) over a
#: socketpair.  smtpctl's `smtp.session.local|inet4|inet6`.
FAMILIES: Final = ("local", "inet4", "inet6")

SMTP_SESSIONS: Final = Counter(
    "postillion_smtp_sessions",
    "SMTP sessions started (admitted by the session limits), local injections included,"
    " by the client's address family",
    ["family"])
SMTP_SESSIONS_ACTIVE: Final = Gauge(
    "postillion_smtp_sessions_active",
    "SMTP sessions open now, across every smtp process",
    multiprocess_mode="livesum")
SMTP_SESSIONS_PAUSED: Final = Counter(
    "postillion_smtp_sessions_paused",
    "Clients refused with 421 because smtp was paused (ctl pause smtp)")
MESSAGES_ACCEPTED: Final = Counter(
    "postillion_smtp_messages_accepted",
    "Messages queued durably and acknowledged with 250 at the end of DATA")
MESSAGES_REFUSED: Final = Counter(
    "postillion_smtp_messages_refused",
    "Transactions refused at MAIL FROM or at the end of DATA, by enhanced status code",
    ["code"])
RECIPIENTS_REFUSED: Final = Counter(
    "postillion_smtp_recipients_refused",
    "Recipients refused at RCPT TO, by enhanced status code",
    ["code"])
ENVELOPES_ENQUEUED: Final = Counter(
    "postillion_queue_envelopes_enqueued",
    "Envelopes made durable in the queue (one per recipient of a committed message)")
COMMIT_SECONDS: Final = Histogram(
    "postillion_queue_commit_seconds",
    "Seconds one group commit took: writing, flushing (fsync) and moving its messages",
    buckets=COMMIT_BUCKETS)

# -- the queue process -----------------------------------------------------------

QUEUE_ENVELOPES: Final = Gauge(
    "postillion_queue_envelopes",
    "Envelopes in the queue (waiting or being delivered), read when scraped",
    multiprocess_mode="livesum")
QUEUE_OLDEST_AGE: Final = Gauge(
    "postillion_queue_oldest_envelope_age_seconds",
    "Age of the oldest envelope in the queue, 0 when it is empty, read when scraped",
    multiprocess_mode="livesum")
DELIVERIES: Final = Counter(
    "postillion_deliveries",
    "Delivery attempts by agent (envelope type: mda, mta, bounce) and result",
    ["agent", "result"])
#: The `reason` label of postillion_queue_envelopes_dequeued_total: what
#: ended the envelope's life in the queue.  `failed`: given up for good
#: (bounced, or no DSN wanted); `expired`: given up for age; `removed`:
#: `ctl remove`.
DEQUEUE_REASONS: Final = ("delivered", "failed", "expired", "removed")
ENVELOPES_DEQUEUED: Final = Counter(
    "postillion_queue_envelopes_dequeued",
    "Envelopes that left the queue, by reason: delivered, failed, expired, removed",
    ["reason"])
BOUNCES_QUEUED: Final = Counter(
    "postillion_queue_bounces",
    "Delivery status notifications (bounces, delay warnings) queued")
DELIVERY_LOOPS: Final = Counter(
    "postillion_delivery_loops",
    "Local deliveries refused because the message already held Delivered-To: the recipient")

# -- the mta process ---------------------------------------------------------------

ROUTE_ERRORS: Final = Counter(
    "postillion_mta_route_errors",
    "Sessions to a next hop that could not be opened, by the phase that failed",
    ["phase"])

# -- every process -----------------------------------------------------------------

TABLE_LOOKUP_SECONDS: Final = Histogram(
    "postillion_table_lookup_seconds",
    "Seconds one table backend call took (lookup, check or fetch), failures included",
    ["backend"], buckets=LOOKUP_BUCKETS)


def status_label(code: int, enhanced: str) -> str:
    """The `code` label of a refusal: the enhanced status code ("5.1.1"),
    or the basic one ("554") for a reply that carries none.  Both come from
    our own fixed replies, so the set of values stays small."""
    return enhanced or str(code)


def address_family(peer: str) -> str:
    """The `family` label of a session's client address: "local" (what a
    session over a socketpair or a Unix socket calls its peer), "inet6"
    (an IPv4-mapped address included, as smtpd counts it) or "inet4"."""
    return "local" if peer == "local" else "inet6" if ":" in peer else "inet4"
