"""The MTA's DNS cache: one answer per (name, type), kept for its TTL.

A queue holding a thousand envelopes for one domain must ask the DNS once,
not a thousand times; so `dns.MxResolver` keeps every answer it got --
records, "no such name" (NXDOMAIN) and "no record of this type" (NODATA)
alike -- for as long as its TTL allows, capped by the resolver's settings.
A query that could not be answered (SERVFAIL, timeout) is never kept: the
next attempt must ask again.

The cache is bounded: past `size` entries the least recently used is
dropped, so a flood of distinct domains costs memory in proportion to the
setting, never to the flood.  The clock is injectable so tests can age
entries without sleeping.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Answer:
    """What one DNS query said, in text form.

    `records` holds the answer's data (`(preference, exchange)` pairs for MX,
    address strings for A/AAAA, names for PTR); it is empty for NODATA and
    for NXDOMAIN, which `nxdomain` tells apart.
    """

    records: tuple = ()
    nxdomain: bool = False


class TtlCache:
    """A bounded LRU map whose entries expire after their own TTL (seconds)."""

    def __init__(self, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        if size < 0:
            raise ValueError("cache size must be >= 0")
        self.size = size
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, Answer]] = OrderedDict()

    def get(self, key: Hashable) -> Answer | None:
        """The live answer for key, or None (never cached, expired or evicted)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, answer = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return answer

    def put(self, key: Hashable, answer: Answer, ttl: float) -> None:
        """Keep answer for ttl seconds; a TTL of 0 (RFC 1035: use once) keeps nothing."""
        if ttl <= 0 or self.size == 0:
            self._entries.pop(key, None)
            return
        self._entries[key] = (self._clock() + ttl, answer)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
