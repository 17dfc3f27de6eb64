"""Builders that put the same logical table into each backend, for real.

A builder writes real files and real SQLite databases under tmp_path and
opens a `Table` through `open_table`, exactly as the daemon would.  The
conformance suite runs every test against each builder.

SQL data holds keys lowercased (the table binds the lowercased key; an
administrator writing capitals in SQL must use COLLATE NOCASE), so the SQLite
builder lowercases keys when it inserts them.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import ldap3
import pytest

from postillion.table import Service, Table, open_table
from postillion.table.dbfile import Entry, write_map
from postillion.table.sqlshape import columns
from tests.ldapserver import (  # noqa: F401  (own_slapd, slapd_server: the fixtures)
    ADMIN_DN, ADMIN_PASSWORD, MAILER_DN, MAILER_PASSWORD, SUFFIX, SlapdServer, own_slapd,
    slapd_server,
)


class Builder:
    kind = ""
    lists_match = True      # wildcards/CIDR are matched by the table (not the query)
    can_update = True
    update_error = r"table aliases: \w+: .*:\d+: "    # a failed update names file:line

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.opened: list[Table] = []

    async def _open(self, table: Table) -> Table:
        await table.open()
        self.opened.append(table)
        return table

    async def list(self, name: str, service: Service, items: Sequence[str]) -> Table:
        raise NotImplementedError

    async def map(self, name: str, service: Service, pairs: dict[str, str]) -> Table:
        raise NotImplementedError

    async def sources(self, name: str, items: Sequence[str]) -> Table:
        """A table fetching `items` in turn (relay `src <t>`)."""
        return await self.list(name, Service.SOURCE, items)

    def rewrite_list(self, name: str, service: Service, items: Sequence[str]) -> None:
        raise NotImplementedError

    def rewrite_map(self, name: str, service: Service, pairs: dict[str, str]) -> None:
        """Change the source so that `update()` sees new contents."""
        raise NotImplementedError

    def break_source(self, name: str, service: Service) -> None:
        """Make the source unusable, so that `update()` must fail."""
        raise NotImplementedError

    async def aclose(self) -> None:
        for table in self.opened:
            await table.close()


class StaticBuilder(Builder):
    kind = "static"
    can_update = False

    async def list(self, name, service, items):
        return await self._open(open_table(name, "static", None, items=tuple(items)))

    async def map(self, name, service, pairs):
        return await self._open(open_table(name, "static", None, pairs=tuple(pairs.items()),
                                           is_map=True))


def file_text_map(pairs: dict[str, str]) -> str:
    return "# written by the test suite\n\n" + "".join(f"{k} {v}\n" for k, v in pairs.items())


class FileBuilder(Builder):
    kind = "file"

    def path(self, name: str) -> Path:
        return self.tmp / f"{name}.txt"

    async def list(self, name, service, items):
        self.path(name).write_text("# @list\n" + "".join(f"{i}\n" for i in items))
        return await self._open(open_table(name, "file", str(self.path(name))))

    async def map(self, name, service, pairs):
        self.path(name).write_text(file_text_map(pairs))
        return await self._open(open_table(name, "file", str(self.path(name))))

    def rewrite_map(self, name, service, pairs):
        self.path(name).write_text(file_text_map(pairs))

    def rewrite_list(self, name, service, items):
        self.path(name).write_text("# @list\n" + "".join(f"{i}\n" for i in items))

    def break_source(self, name, service):
        with self.path(name).open("a") as f:
            f.write("a-key-without-value\n")


class DbBuilder(Builder):
    """`db:` maps and sets, written by the code `postillion makemap` runs."""

    kind = "db"
    update_error = r"table aliases: db: .*Berkeley DB file"

    def path(self, name: str) -> Path:
        return self.tmp / f"{name}.db"

    def _write(self, name: str, kind: str, pairs: Sequence[tuple[str, str]]) -> None:
        entries = [Entry(k.lower(), v, n) for n, (k, v) in enumerate(pairs, 1)]
        write_map(entries, str(self.path(name)), kind, str(self.tmp / name))

    async def list(self, name, service, items):
        self._write(name, "set", [(i, i) for i in items])
        return await self._open(open_table(name, "db", str(self.path(name))))

    async def map(self, name, service, pairs):
        self._write(name, "map", list(pairs.items()))
        return await self._open(open_table(name, "db", str(self.path(name))))

    def rewrite_map(self, name, service, pairs):
        self._write(name, "map", list(pairs.items()))

    def rewrite_list(self, name, service, items):
        self._write(name, "set", [(i, i) for i in items])

    def break_source(self, name, service):
        # What OpenSMTPD's makemap leaves: a Berkeley DB 1.85 hash file,
        # written aside and renamed over the map as makemap does.
        aside = self.tmp / f"{name}.db.new"
        aside.write_bytes(b"\x61\x15\x06\x00" + b"\x00" * 508)
        aside.replace(self.path(name))


class SqliteBuilder(Builder):
    kind = "sqlite"
    lists_match = False
    generation = 0

    def conf(self, name: str) -> Path:
        return self.tmp / f"{name}.conf"

    def _write(self, name: str, service: Service, rows: list[tuple[object, ...]], ncols: int) -> None:
        self.generation += 1
        db_name = f"{name}-{self.generation}.sqlite"
        cols = [f"c{i}" for i in range(1, ncols + 1)]
        db = sqlite3.connect(self.tmp / db_name)
        db.execute(f"CREATE TABLE t (k TEXT, {', '.join(cols)})")
        db.executemany(f"INSERT INTO t VALUES (?, {', '.join('?' * ncols)})", rows)
        db.commit()
        db.close()
        self.conf(name).write_text(
            f"dbpath {db_name}\n"
            f"query_{service.value} SELECT {', '.join(cols)} FROM t WHERE k = ?\n")

    def _map_rows(self, service: Service, pairs: dict[str, str]) -> list[tuple[object, ...]]:
        n = columns(service)
        rows: list[tuple[object, ...]] = []
        for key, raw in pairs.items():
            parts: list[object] = list(raw.split(":", n - 1)) if n > 1 else [raw]
            if n == 2 and len(parts) == 1:
                parts = [key.lower(), raw]          # `secret` alone: user = key
            parts += [None] * (n - len(parts))
            rows.append((key.lower(), *parts))
        return rows

    async def list(self, name, service, items):
        self._write(name, service, [(i.lower(), i) for i in items], 1)
        return await self._open(open_table(name, "sqlite", str(self.conf(name))))

    async def map(self, name, service, pairs):
        self._write(name, service, self._map_rows(service, pairs), columns(service))
        return await self._open(open_table(name, "sqlite", str(self.conf(name))))

    def rewrite_map(self, name, service, pairs):
        self._write(name, service, self._map_rows(service, pairs), columns(service))

    def break_source(self, name, service):
        with self.conf(name).open("a") as f:
            f.write("dbpth typo.sqlite\n")

    async def sources(self, name, items):
        self._write(name, Service.SOURCE, [(i, i) for i in items], 1)
        self.conf(name).write_text(
            f"dbpath {name}-{self.generation}.sqlite\n"
            f"fetch_source SELECT c1 FROM t ORDER BY rowid\n")
        return await self._open(open_table(name, "sqlite", str(self.conf(name))))


class LdapBuilder(Builder):
    """Each table is a subtree of our slapd (tests/ldapserver.py), a new one
    per write: entries `applicationProcess` with the key in `cn` and the raw
    value in `description`, searched with `(cn=%s)`."""

    kind = "ldap"
    lists_match = False
    server: SlapdServer
    count = 0

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        LdapBuilder.count += 1
        self.top = f"ou=b{LdapBuilder.count}-{uuid.uuid4().hex[:8]},ou=tables,{SUFFIX}"
        self.generation = 0
        self.admin: ldap3.Connection | None = None

    def conf(self, name: str) -> Path:
        return self.tmp / f"{name}.conf"

    def _write(self, name: str, service: Service, pairs: Sequence[tuple[str, str]]) -> None:
        if self.admin is None:
            self.admin = ldap3.Connection(ldap3.Server(self.server.url.rstrip("/")),
                                          ADMIN_DN, ADMIN_PASSWORD, auto_bind=True)
            assert self.admin.add(self.top, ["organizationalUnit"])
        self.generation += 1
        base = f"ou={name}-{self.generation},{self.top}"
        assert self.admin.add(base, ["organizationalUnit"]), self.admin.result
        for n, (key, value) in enumerate(pairs, 1):
            assert self.admin.add(f"ou=e{n},{base}", ["applicationProcess"],
                                  {"cn": key, "description": value}), self.admin.result
        self.conf(name).write_text(
            f"# written by the test suite\n"
            f"url {self.server.url}\n"
            f"username {MAILER_DN}\n"
            f"password {MAILER_PASSWORD}\n"
            f"basedn {base}\n"
            f"{service.value}_filter (&(objectClass=applicationProcess)(cn=%s))\n"
            f"{service.value}_attributes description\n")

    async def list(self, name, service, items):
        self._write(name, service, [(i, i) for i in items])
        return await self._open(open_table(name, "ldap", str(self.conf(name))))

    async def map(self, name, service, pairs):
        self._write(name, service, list(pairs.items()))
        return await self._open(open_table(name, "ldap", str(self.conf(name))))

    def rewrite_map(self, name, service, pairs):
        self._write(name, service, list(pairs.items()))

    def break_source(self, name, service):
        with self.conf(name).open("a") as f:
            f.write("basdn typo\n")

    async def aclose(self) -> None:
        await super().aclose()
        if self.admin is not None:
            self.admin.unbind()


# Adding a backend to the conformance suite = one Builder here and its name
# in the fixtures' params below.
BUILDERS = {"static": StaticBuilder, "file": FileBuilder, "db": DbBuilder,
            "sqlite": SqliteBuilder, "ldap": LdapBuilder}
NEEDS_SERVER = {"ldap": "slapd_server"}


def _build(request, tmp_path: Path) -> Builder:
    b = BUILDERS[request.param](tmp_path)
    if request.param in NEEDS_SERVER:
        b.server = request.getfixturevalue(NEEDS_SERVER[request.param])
    return b


@pytest.fixture(params=sorted(BUILDERS))
async def builder(request, tmp_path) -> AsyncIterator[Builder]:
    b = _build(request, tmp_path)
    yield b
    await b.aclose()


@pytest.fixture(params=["static", "file", "db", "sqlite"])
async def fetcher(request, tmp_path) -> AsyncIterator[Builder]:
    """Backends that can fetch sources in turn (an ldap table only looks up)."""
    b = _build(request, tmp_path)
    yield b
    await b.aclose()


@pytest.fixture(params=["static", "file", "db"])
async def list_builder(request, tmp_path) -> AsyncIterator[Builder]:
    """Backends whose lists the table matches itself (docs/tables.md, Lists and maps)."""
    b = BUILDERS[request.param](tmp_path)
    yield b
    await b.aclose()


@pytest.fixture(params=["file", "db", "sqlite", "ldap"])
async def updatable(request, tmp_path) -> AsyncIterator[Builder]:
    """Backends whose contents change without a config reload (not static)."""
    b = _build(request, tmp_path)
    yield b
    await b.aclose()


@pytest.fixture(params=["file", "db"])
async def updatable_list(request, tmp_path) -> AsyncIterator[Builder]:
    """Lists the table matches itself and that change without a config reload."""
    b = BUILDERS[request.param](tmp_path)
    yield b
    await b.aclose()
