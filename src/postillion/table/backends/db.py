"""`db:/etc/mail/aliases.db`: a compiled map built by `postillion makemap`.

The file is an SQLite database (`table/dbfile.py`, docs/tables.md): a map
(`makemap`, `makemap -t aliases`) answers lookups by its unique key index,
a set (`makemap -t set`) is a list the `Table` matches element by element
(domain wildcards, CIDR) and fetches from in turn (relay `src`).

Reopened on change, checked on every lookup [ours]: one `stat` of the path,
and a new generation is opened when its inode, size or mtime differ, which
is what `makemap`'s write-aside-and-rename produces.  A generation is one
read-only connection plus, for a set, its elements; swapping it is one
assignment in the table's single worker thread, so a lookup sees the old map
or the new one, never a mixture.  A replacement that cannot be opened (not a
map, a Berkeley DB left by OpenSMTPD, the other shape) keeps the old
generation, warns once per change of the file, and fails `update table`.

Values are parsed at lookup (an ERROR, 451, if malformed); `makemap -t
aliases` checks alias targets when it builds.  SQLite blocks, so every
operation runs in the table's own worker thread, never on the event loop.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Final, TypeVar

from postillion.table.backend import (
    LIST_SERVICES, MAP_SERVICES, EntryCheck, Shape, shape_serves,
)
from postillion.table.dbfile import open_map
from postillion.table.errors import BackendError
from postillion.table.services import Service
from postillion.table.textformat import Contents, check_contents
from postillion.table.worker import Worker

T = TypeVar("T")
log = logging.getLogger("postillion.table")

Signature = tuple[int, int, int, int]   # st_dev, st_ino, st_size, st_mtime_ns
GONE: Final[Signature] = (-1, -1, -1, -1)  # the path cannot be stat'ed


@dataclass(slots=True)
class _Generation:
    conn: sqlite3.Connection
    shape: Shape
    signature: Signature
    elements: tuple[str, ...] | None = field(default=None)

    def close(self) -> None:
        self.conn.close()


def _signature(path: str) -> Signature:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class DbBackend:
    name: ClassVar[str] = "db"
    services: ClassVar[frozenset[Service]] = LIST_SERVICES | MAP_SERVICES

    def __init__(self, config: str | None, *, items: Sequence[str] = (),
                 pairs: Sequence[tuple[str, str]] = (), is_map: bool = False) -> None:
        if not config:
            raise BackendError("a db table needs a path: db:/path/to/map.db")
        if items or pairs:
            raise BackendError("a db table takes a path, not { ... }")
        self.path = config
        self._gen: _Generation | None = None
        self._failed: Signature | None = None     # a replacement that did not open
        self._cursor = 0
        self._worker: Worker | None = None
        self._checks: dict[Service, EntryCheck] = {}

    # ---------------------------------------------------------- description

    @property
    def shape(self) -> Shape | None:
        return self._gen.shape if self._gen is not None else None

    def serves(self, service: Service) -> bool:
        return shape_serves(self.shape, self.services, service)

    # ------------------------------------------------- in the worker thread

    def _open_generation(self) -> _Generation:
        try:
            before = _signature(self.path)
        except OSError as e:
            raise BackendError(f"{self.path}: {e.strerror or e}") from None
        conn, kind = open_map(self.path)
        shape = Shape.LIST if kind == "set" else Shape.MAP
        pinned = self.shape
        if pinned is not None and shape is not pinned:
            conn.close()
            raise BackendError(f"{self.path}: is now a {shape.value} but was a {pinned.value};"
                               " reload the config to change a table's shape")
        gen = _Generation(conn, shape, before)
        if shape is Shape.LIST and self._checks:
            try:
                elements = self._load_elements(gen)
                for check in self._checks.values():
                    check_contents(Contents.of_list(elements), check)
            except BaseException:
                conn.close()
                raise
        return gen

    def _load_elements(self, gen: _Generation) -> tuple[str, ...]:
        if gen.elements is None:
            try:
                rows = gen.conn.execute("SELECT value FROM map ORDER BY rowid").fetchall()
            except sqlite3.Error as e:
                raise BackendError(f"{self.path}: {e}") from None
            gen.elements = tuple(str(r[0]) for r in rows)
        return gen.elements

    def _swap(self, gen: _Generation) -> None:
        old, self._gen = self._gen, gen      # one assignment: old or new, never both
        self._failed = None
        if old is not None:
            old.close()

    def _fresh(self) -> _Generation:
        """The current generation, reopened first if the file changed."""
        gen = self._gen
        if gen is None:
            raise BackendError("table not open")
        try:
            now = _signature(self.path)
        except OSError:
            now = GONE
        if now == gen.signature or now == self._failed:
            return gen
        try:
            if now == GONE:
                raise BackendError(f"{self.path}: gone")
            self._swap(self._open_generation())
        except BackendError as e:
            self._failed = now
            log.warning("table db reopen failed, keeping previous contents: %s", e)
        return self._gen or gen

    def _sync_open(self) -> None:
        self._swap(self._open_generation())

    def _sync_close(self) -> None:
        gen, self._gen = self._gen, None
        if gen is not None:
            gen.close()

    def _query(self, sql: str, key: str) -> tuple[object, ...] | None:
        gen = self._fresh()
        try:
            return gen.conn.execute(sql, (key,)).fetchone()
        except UnicodeEncodeError:
            return None          # a key that is not text cannot be in the map
        except sqlite3.Error as e:
            gen.signature = (-2, -2, -2, -2)     # differs from any: reopen on the next lookup
            raise BackendError(f"{self.path}: {e}") from None

    def _sync_lookup(self, key: str) -> str | None:
        row = self._query("SELECT value FROM map WHERE key = ?", key)
        return None if row is None else str(row[0])

    def _sync_check(self, key: str) -> bool:
        return self._query("SELECT 1 FROM map WHERE key = ?", key) is not None

    def _sync_elements(self) -> tuple[str, ...]:
        gen = self._fresh()
        if gen.shape is not Shape.LIST:
            raise BackendError(f"{self.path}: a map, not a list (built without -t set)")
        return self._load_elements(gen)

    def _sync_validate(self, service: Service, check: EntryCheck) -> None:
        gen = self._fresh()
        if gen.shape is Shape.LIST:
            check_contents(Contents.of_list(self._load_elements(gen)), check)
        self._checks[service] = check

    def _sync_entries(self) -> tuple[tuple[str, str], ...]:
        gen = self._fresh()
        if gen.shape is not Shape.MAP:
            raise BackendError(f"{self.path}: a list (built with -t set), not a map")
        try:
            rows = gen.conn.execute("SELECT key, value FROM map ORDER BY rowid").fetchall()
        except sqlite3.Error as e:
            raise BackendError(f"{self.path}: {e}") from None
        return tuple((str(k), str(v)) for k, v in rows)

    # ---------------------------------------------------- from the event loop

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._worker is None:
            self._worker = Worker("postillion-db")
        return await self._worker.run(fn, *args)

    async def open(self) -> None:
        await self._run(self._sync_open)

    async def update(self) -> None:
        """Reopen now, even if the file looks unchanged; keep the old on failure."""
        await self._run(self._sync_open)

    async def close(self) -> None:
        if self._worker is None:
            return
        try:
            await self._run(self._sync_close)
        finally:
            self._worker.stop()
            self._worker = None

    async def lookup(self, service: Service, key: str) -> str | None:
        return await self._run(self._sync_lookup, key)

    async def check(self, service: Service, key: str) -> bool:
        return await self._run(self._sync_check, key)

    async def fetch(self, service: Service) -> str | None:
        """Elements in turn, wrapping around: relay `src <t>`, `host <t>`."""
        elements = await self.elements()
        if not elements:
            return None
        element = elements[self._cursor % len(elements)]
        self._cursor = (self._cursor + 1) % len(elements)
        return element

    async def elements(self) -> Sequence[str]:
        return await self._run(self._sync_elements)

    async def entries(self) -> Sequence[tuple[str, str]]:
        return await self._run(self._sync_entries)

    async def validate_on_load(self, service: Service, check: EntryCheck) -> None:
        """A set is checked now and at each reopen (it is read whole to be
        matched anyway); a map's values are checked one lookup at a time,
        since it may hold millions."""
        await self._run(self._sync_validate, service, check)
