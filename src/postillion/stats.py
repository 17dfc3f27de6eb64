"""The counters of `postillion ctl show stats` and `monitor`, read from
this process's Prometheus metrics.

One source of truth: every event is counted once, by the metric objects of
`postillion.metrics` (docs/metrics.md), and this module only names their
values as smtpctl does -- a flat map of dotted names to integers, one per
process, that the queue process (which serves the control socket) asks
of every process and sums (docs/commands.md, show stats).

A metric's `collect()` gives this process's samples only, in both of
prometheus_client's modes: in-process, and in the multiprocess mode (when
`metrics listen on` is configured), where each process's values live in
its own memory-mapped files and `collect()` reads those, never the other
processes' -- so the sum over processes counts each event once.  The
gauges the queue and mta processes compute when asked (`queue.size`,
`scheduler.envelope...`, `mta.session`...) are added by them.

A leaf: it imports only `metrics` (a leaf too), and every package may
read it.  Nothing counts through it: call sites touch the metric objects.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from postillion import metrics

#: smtpctl's `scheduler.delivery.*` and `mta.relay.*` results, as the
#: `result` label of postillion_deliveries_total spells them.
RESULTS: Final = ("ok", "tempfail", "permfail")


def _values(metric: Any) -> dict[tuple[str, ...], float]:
    """This process's values of one metric, by label values: a counter's
    `_total` samples, a gauge's own (never `_created`)."""
    out: dict[tuple[str, ...], float] = {}
    for family in metric.collect():
        wanted = (family.name + "_total", family.name) if family.type == "counter" else (family.name,)
        for sample in family.samples:
            if sample.name in wanted:
                key = tuple(sample.labels.values())
                out[key] = out.get(key, 0.0) + sample.value
    return out


def _sum(values: dict[tuple[str, ...], float], match: Iterable[tuple[int, str]] = ()) -> float:
    """The sum of the values whose label at each given position matches."""
    match = tuple(match)
    return sum(v for key, v in values.items() if all(key[i] == want for i, want in match))


def snapshot() -> dict[str, int]:
    """This process's counters under smtpctl's names, for a control answer.

    A counter that has counted nothing here is left out (as smtpd shows
    only the stats it has set); `smtp.session`, the sessions open now, is
    always there."""
    sessions = _values(metrics.SMTP_SESSIONS)
    active = int(_sum(_values(metrics.SMTP_SESSIONS_ACTIVE)))
    deliveries = _values(metrics.DELIVERIES)            # (agent, result)
    dequeued = _values(metrics.ENVELOPES_DEQUEUED)      # (reason,)
    counts: dict[str, float] = {
        # Opened and ended in the same place (smtp/session.py), so the
        # sessions that ended are the started ones no longer open.
        "smtp.session.closed": _sum(sessions) - active,
        "smtp.session.paused": _sum(_values(metrics.SMTP_SESSIONS_PAUSED)),
        "queue.envelope.enqueued": _sum(_values(metrics.ENVELOPES_ENQUEUED)),
        "queue.envelope.dequeued": _sum(dequeued),
        "queue.bounce": _sum(_values(metrics.BOUNCES_QUEUED)),
        "scheduler.envelope.expired": _sum(dequeued, [(0, "expired")]),
        "scheduler.envelope.removed": _sum(dequeued, [(0, "removed")]),
        "scheduler.delivery.loop": _sum(_values(metrics.DELIVERY_LOOPS)),
    }
    for family in metrics.FAMILIES:
        counts[f"smtp.session.{family}"] = _sum(sessions, [(0, family)])
    for result in RESULTS:
        counts[f"scheduler.delivery.{result}"] = _sum(deliveries, [(1, result)])
        counts[f"mta.relay.{result}"] = _sum(deliveries, [(0, "mta"), (1, result)])
    out = {name: int(value) for name, value in counts.items() if value}
    out["smtp.session"] = active
    return dict(sorted(out.items()))


def add(total: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    """Sum two snapshots (another process's answer into the total)."""
    for name, value in more.items():
        if isinstance(value, int) and not isinstance(value, bool):
            total[name] = total.get(name, 0) + value
    return total
