"""What static and file tables share: answering from in-memory `Contents`.

Both hold a list or a map in memory and answer without I/O; they differ only
in where the contents come from (the config, or a file reloaded on change).
Subclasses implement `_current()`, which for a file first checks its mtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from postillion.table.backend import (
    LIST_SERVICES, MAP_SERVICES, EntryCheck, Shape, shape_serves,
)
from postillion.table.errors import BackendError
from postillion.table.services import Service
from postillion.table.textformat import Contents, check_contents


class ContentsBackend:
    """Lookup, check, fetch and elements over a `Contents` snapshot."""

    services: ClassVar[frozenset[Service]] = LIST_SERVICES | MAP_SERVICES

    _contents: Contents | None
    _cursor: int = 0
    _checks: dict[Service, EntryCheck]

    def _combined_check(self) -> EntryCheck | None:
        """One check running those of every service the table is verified for."""
        checks = list(self._checks.values())
        if not checks:
            return None

        def check(key: str | None, raw: str) -> None:
            for one in checks:
                one(key, raw)
        return check

    @property
    def shape(self) -> Shape | None:
        return self._contents.shape if self._contents is not None else None

    def serves(self, service: Service) -> bool:
        return shape_serves(self.shape, self.services, service)

    async def _current(self) -> Contents:
        if self._contents is None:
            raise BackendError("table not open")
        return self._contents

    async def lookup(self, service: Service, key: str) -> str | None:
        contents = await self._current()
        return contents.mapping.get(key)

    async def check(self, service: Service, key: str) -> bool:
        contents = await self._current()
        return key in contents.mapping

    async def fetch(self, service: Service) -> str | None:
        """Elements in turn, wrapping around: relay `src <t>`, `host <t>`."""
        contents = await self._current()
        if contents.shape is not Shape.LIST:
            raise BackendError("fetch needs a list, this table is a map")
        if not contents.elements:
            return None
        element = contents.elements[self._cursor % len(contents.elements)]
        self._cursor = (self._cursor + 1) % len(contents.elements)
        return element

    async def elements(self) -> Sequence[str]:
        contents = await self._current()
        if contents.shape is not Shape.LIST:
            raise BackendError("this table is a map, not a list")
        return contents.elements

    async def entries(self) -> Sequence[tuple[str, str]]:
        contents = await self._current()
        if contents.shape is not Shape.MAP:
            raise BackendError("this table is a list, not a map")
        return tuple(contents.mapping.items())

    async def validate_on_load(self, service: Service, check: EntryCheck) -> None:
        """Check the contents now; file tables also check each reload."""
        contents = await self._current()
        check_contents(contents, check)
        self._checks[service] = check
