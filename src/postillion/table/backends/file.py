"""`file:/path`: a table in a text file (docs/tables.md), `/etc/mail/aliases` style.

Read at open, re-read by `update table` and, [ours], whenever the file's
mtime, size or inode changes: an administrator who edits the aliases file
expects the next message to see it, without a command.  The check is one
`stat` at most once per `STAT_INTERVAL` (1 s) per table, on the lookup path.

A reload that fails (a line without a value, a duplicate key, the file gone)
keeps the old contents: mail keeps flowing on what was last good.  `update`
says why; a reload noticed on lookup logs it once per change of the file.

A file keeps the shape it had at open (list or map): the daemon checked at
start that each use of the table suits that shape, so a file that turns from
a map into a list is refused until the config is reloaded.  An emptied file
fits either shape.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import ClassVar, Sequence

from postillion.table.backend import EntryCheck
from postillion.table.backends._contents import ContentsBackend
from postillion.table.errors import BackendError
from postillion.table.services import Service
from postillion.table.textformat import Contents, parse_table_text

log = logging.getLogger("postillion.table")

Signature = tuple[int, int, int, int]   # st_dev, st_ino, st_size, st_mtime_ns


def _read(path: str, check: EntryCheck | None = None) -> tuple[Contents, Signature]:
    """Read, parse and check the file; blocking, so run in a thread."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except OSError as e:
        raise BackendError(f"{path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise BackendError(f"{path}:{line}: not UTF-8 text") from None
    return parse_table_text(text, path, check), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class FileBackend(ContentsBackend):
    name: ClassVar[str] = "file"
    STAT_INTERVAL: ClassVar[float] = 1.0   # seconds between mtime checks

    def __init__(self, config: str | None, *, items: Sequence[str] = (),
                 pairs: Sequence[tuple[str, str]] = (), is_map: bool = False) -> None:
        if not config:
            raise BackendError("a file table needs a path: file:/path/to/file")
        if items or pairs:
            raise BackendError("a file table takes a path, not { ... }")
        self.path = config
        self._contents = None
        self._signature: Signature | None = None
        self._next_stat = 0.0
        self._lock = asyncio.Lock()
        self._checks = {}

    async def open(self) -> None:
        contents, signature = await asyncio.to_thread(_read, self.path)
        if not contents.decided:
            contents = Contents.of_map({})
        self._swap(contents, signature)

    async def close(self) -> None:
        return None

    async def update(self) -> None:
        async with self._lock:
            await self._reload()

    async def validate_on_load(self, service: Service, check: EntryCheck) -> None:
        """Re-read the file checking `service` too, so errors name `file:line`.

        From now on every reload is checked for it before the swap.
        """
        async with self._lock:
            previous = self._checks.get(service)
            self._checks[service] = check
            try:
                await self._reload()
            except BaseException:
                if previous is None:
                    del self._checks[service]
                else:
                    self._checks[service] = previous
                raise

    async def _reload(self) -> None:
        contents, signature = await asyncio.to_thread(_read, self.path, self._combined_check())
        pinned = self.shape
        if pinned is not None and contents.shape is not pinned:
            if contents.decided:
                raise BackendError(
                    f"{self.path}: is now a {contents.shape.value} but was a {pinned.value};"
                    " reload the config to change a table's shape")
            contents = Contents(pinned)
        self._swap(contents, signature)

    def _swap(self, contents: Contents, signature: Signature) -> None:
        self._contents = contents       # one assignment: readers see old or new
        self._signature = signature
        self._next_stat = time.monotonic() + self.STAT_INTERVAL

    async def _current(self) -> Contents:
        if self._contents is None:
            raise BackendError("table not open")
        now = time.monotonic()
        if now >= self._next_stat:
            self._next_stat = now + self.STAT_INTERVAL
            await self._reload_if_changed()
        return self._contents

    async def _reload_if_changed(self) -> None:
        try:
            st = os.stat(self.path)
            signature: Signature | None = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            signature = None
        if signature == self._signature:
            return
        async with self._lock:
            if signature == self._signature:
                return
            try:
                await self._reload()
            except BackendError as e:
                # Remember the broken version so we warn once, not per lookup.
                self._signature = signature
                log.warning("table file reload failed, keeping previous contents: %s", e)
