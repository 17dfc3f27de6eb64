"""`fetch_source`: a dynamic table's source addresses, served in turn.

The SQL and Redis backends read the whole list with their `fetch_source`
query and hand out one element per fetch, cyclically (relay `src <t>`:
docs/tables.md); the list is read again after `fetch_source_expire`
seconds or `fetch_source_refresh` fetches, whichever comes first, so an
edited table applies soon without a query per connection.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Final

FETCH_EXPIRE: Final = 60        # fetch_source_expire: seconds a list read is used
FETCH_REFRESH: Final = 1000     # fetch_source_refresh: fetches before it is read again


class SourceCycle:
    """The list last read and where the turn is; `next(read)` reads it again when due."""

    def __init__(self, expire: float = FETCH_EXPIRE, refresh: int = FETCH_REFRESH,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.expire = expire
        self.refresh = refresh
        self.clock = clock
        self.sources: list[str] = []
        self.read_at = 0.0
        self.fetches = 0
        self.cursor = 0

    async def next(self, read: Callable[[], Awaitable[list[str]]]) -> str | None:
        """The next source, None for an empty list; `read` raises as the backend does."""
        now = self.clock()
        if not self.read_at or now - self.read_at >= self.expire or self.fetches >= self.refresh:
            self.sources = await read()
            self.read_at, self.fetches = now, 0
        self.fetches += 1
        if not self.sources:
            return None
        source = self.sources[self.cursor % len(self.sources)]
        self.cursor = (self.cursor + 1) % len(self.sources)
        return source
