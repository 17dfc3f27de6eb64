"""`static`: a table written inline in smtpd.conf, `{ a, b }` or `{ k = v }`.

The contents come from the config and never change while the daemon runs
(a config reload builds a new table), so open/update/close do nothing.  Map
keys are lowercased here, at load (docs/tables.md); two keys that become equal is
an error, since one of the two lines would silently never be used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from postillion.table.backends._contents import ContentsBackend
from postillion.table.errors import BackendError
from postillion.table.textformat import Contents


class StaticBackend(ContentsBackend):
    name: ClassVar[str] = "static"

    def __init__(self, config: str | None, *, items: Sequence[str] = (),
                 pairs: Sequence[tuple[str, str]] = (), is_map: bool = False) -> None:
        if config is not None:
            raise BackendError("an inline table takes { ... }, not a path")
        self._checks = {}
        if items and pairs:
            raise BackendError("an inline table holds elements or key/value pairs, not both")
        if pairs or is_map:
            mapping: dict[str, str] = {}
            for key, value in pairs:
                folded = key.lower()
                if folded in mapping:
                    raise BackendError(f'duplicate key "{folded}" (keys are case-blind)')
                mapping[folded] = value
            self._contents = Contents.of_map(mapping)
        else:
            self._contents = Contents.of_list(list(items))

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def update(self) -> None:
        return None
