"""Counters each process keeps for `postillion ctl show stats` and `monitor`.

As OpenSMTPD's stat_increment: a flat map of dotted names to integers, one
per process, read by the queue process (which serves the control socket)
and summed over every process.  Names (docs/commands.md, show stats):
`smtp.session` (open now), `smtp.session.local|inet4|inet6` (opened since
start), `scheduler.delivery.ok|tempfail|permfail|loop`,
`scheduler.envelope.expired|removed`, `queue.envelope.enqueued|dequeued`,
`queue.bounce`, `mta.relay.ok|tempfail|permfail`...

A leaf: it imports nothing of ours, and every package may count.
"""

from __future__ import annotations

import collections
from typing import Final

#: This process's counters.  Gauges (`smtp.session`) go up and down.
COUNTERS: Final[collections.Counter[str]] = collections.Counter()


def incr(name: str, by: int = 1) -> None:
    COUNTERS[name] += by


def decr(name: str, by: int = 1) -> None:
    COUNTERS[name] -= by


def snapshot() -> dict[str, int]:
    """A copy, for a control answer."""
    return dict(COUNTERS)


def add(total: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    """Sum two snapshots (another process's answer into the total)."""
    for name, value in more.items():
        if isinstance(value, int) and not isinstance(value, bool):
            total[name] = total.get(name, 0) + value
    return total
