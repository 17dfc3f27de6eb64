"""Builders that put the same logical table into each backend, for real.

A builder writes real files and real SQLite databases under tmp_path, or
real tables in the PostgreSQL and MariaDB servers (a schema or database of
its own, dropped at the end: tests/table/sqlservers.py), and opens a `Table`
through `open_table`, exactly as the daemon would.  The
conformance suite runs every test against each builder.

SQL data holds keys lowercased (the table binds the lowercased key; an
administrator writing capitals in SQL must use COLLATE NOCASE), so the SQLite
builder lowercases keys when it inserts them.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import sqlite3
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import ldap3
import pytest
import redis

from tests.table.socketmap_server import SocketmapServer

from postillion.table import Service, Table, open_table
from postillion.table.dbfile import Entry, write_map
from postillion.table.sqlshape import columns
from tests.table.sqlservers import my_conninfo, my_run, pg_conninfo, pg_run, unique
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


def map_rows(service: Service, pairs: dict[str, str]) -> list[tuple[object, ...]]:
    """SQL rows for a map: the key lowercased, the value split into the service's columns."""
    n = columns(service)
    rows: list[tuple[object, ...]] = []
    for key, raw in pairs.items():
        parts: list[object] = list(raw.split(":", n - 1)) if n > 1 else [raw]
        if n == 2 and len(parts) == 1:
            parts = [key.lower(), raw]          # `secret` alone: user = key
        parts += [None] * (n - len(parts))
        rows.append((key.lower(), *parts))
    return rows


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
        return map_rows(service, pairs)

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


REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
PROC_HELPER = Path(__file__).with_name("proc_helper.py")


@contextlib.contextmanager
def shared_helper(data: dict) -> Iterator[Path]:  # type: ignore[type-arg]
    """A directory every user may read, holding our proc helper as
    `table-json` (under the system's Python: the suite's may be root's own)
    and its data as `data.json`: what a daemon, or `check` as root, runs as
    the queue user.  Removed at the end."""
    from tests import sysvenv
    top = Path(tempfile.mkdtemp(prefix="postillion-helper-", dir="/tmp"))
    try:
        top.chmod(0o755)
        shutil.copy(PROC_HELPER, top / "proc_helper.py")
        (top / "proc_helper.py").chmod(0o644)
        program = top / "table-json"
        program.write_text(f"#!/bin/sh\nexec {sysvenv.system_python()} {top / 'proc_helper.py'} \"$@\"\n")
        program.chmod(0o755)
        (top / "data.json").write_text(json.dumps(data))
        (top / "data.json").chmod(0o644)
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def redis_client() -> redis.Redis:
    """The test suite's own client to the Redis server the tests need running.

    Fails loudly (never skips) if there is no server at 127.0.0.1:6379.
    """
    client = redis.Redis(REDIS_HOST, REDIS_PORT, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as e:
        pytest.fail(f"the redis tests need a Redis server at {REDIS_HOST}:{REDIS_PORT}: {e}")
    return client


def drop_prefix(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=prefix + "*", count=500))
    if keys:
        client.delete(*keys)


class RedisBuilder(Builder):
    """Keys under a prefix unique to the test, removed afterwards."""

    kind = "redis"
    lists_match = False

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.client = redis_client()
        self.prefix = f"postillion-test:{uuid.uuid4().hex}:"

    def conf(self, name: str) -> Path:
        return self.tmp / f"{name}.redis.conf"

    def _write(self, name: str, service: Service, pairs: dict[str, str]) -> None:
        base = f"{self.prefix}{name}:"
        old = set(self.client.scan_iter(match=base + "*", count=500))
        new = {(base + k.lower()).encode(): v for k, v in pairs.items()}
        with self.client.pipeline(transaction=True) as pipe:     # readers see old or new
            stale = old - set(new)
            if stale:
                pipe.delete(*stale)
            if new:
                pipe.mset(new)
            pipe.execute()
        self.conf(name).write_text(
            f"master {REDIS_HOST}\nmaster_port {REDIS_PORT}\n"
            f"query_{service.value} GET {base}%s\n")

    async def list(self, name, service, items):
        self._write(name, service, {i: i for i in items})
        return await self._open(open_table(name, "redis", str(self.conf(name))))

    async def map(self, name, service, pairs):
        self._write(name, service, pairs)
        return await self._open(open_table(name, "redis", str(self.conf(name))))

    def rewrite_map(self, name, service, pairs):
        self._write(name, service, pairs)

    def break_source(self, name, service):
        with self.conf(name).open("a") as f:
            f.write("dbpth typo\n")

    async def sources(self, name, items):
        key = f"{self.prefix}{name}"
        self.client.delete(key)
        if items:
            self.client.rpush(key, *items)
        self.conf(name).write_text(f"fetch_source LRANGE {key} 0 -1\n")
        return await self._open(open_table(name, "redis", str(self.conf(name))))

    async def aclose(self) -> None:
        await super().aclose()
        drop_prefix(self.client, self.prefix)
        self.client.close()


class SocketmapBuilder(Builder):
    """One small netstring server of ours per table, backed by a dict."""

    kind = "socketmap"
    lists_match = False
    can_update = False

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.servers: dict[str, SocketmapServer] = {}

    async def _serve(self, name: str, service: Service, pairs: dict[str, str]) -> Table:
        server = SocketmapServer({service.value: {k.lower(): v for k, v in pairs.items()}})
        port = await server.start_tcp()
        self.servers[name] = server
        return await self._open(open_table(name, "socketmap", f"inet:127.0.0.1:{port}"))

    async def list(self, name, service, items):
        return await self._serve(name, service, {i: i for i in items})

    async def map(self, name, service, pairs):
        return await self._serve(name, service, pairs)

    async def aclose(self) -> None:
        await super().aclose()
        for server in self.servers.values():
            await server.close()


class ProcBuilder(Builder):
    """Our helper script (proc_helper.py), serving a JSON file it re-reads on update."""

    kind = "proc"
    lists_match = False

    def data(self, name: str) -> Path:
        return self.tmp / f"{name}.json"

    def _write(self, name: str, service: Service, pairs: dict[str, str],
               sources: Sequence[str] = ()) -> None:
        self.data(name).write_text(json.dumps(
            {"services": [service.value], "map": {k.lower(): v for k, v in pairs.items()},
             "sources": list(sources)}, indent=1))

    def command(self, name: str, mode: str = "") -> str:
        argv = [sys.executable, str(PROC_HELPER), str(self.data(name))] + ([mode] if mode else [])
        return shlex.join(argv)

    async def list(self, name, service, items):
        self._write(name, service, {i: i for i in items})
        return await self._open(open_table(name, "proc", self.command(name)))

    async def map(self, name, service, pairs):
        self._write(name, service, pairs)
        return await self._open(open_table(name, "proc", self.command(name)))

    def rewrite_map(self, name, service, pairs):
        self._write(name, service, pairs)

    def break_source(self, name, service):
        with self.data(name).open("a") as f:
            f.write("\n{ not json\n")

    async def sources(self, name, items):
        self._write(name, Service.SOURCE, {}, items)
        return await self._open(open_table(name, "proc", self.command(name)))


class NetSqlBuilder(Builder):
    """A table in a real server: every write is a new SQL table `t<generation>`
    (rewrites point the config at the next one, as a new SQLite file does)."""

    lists_match = False
    generation = 0
    param = ""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.space = unique(f"pt_{self.kind}")
        self.tables: dict[str, str] = {}
        self.admin([self.create_space()])

    def conf(self, name: str) -> Path:
        return self.tmp / f"{name}.conf"

    def admin(self, statements, fetch=None):
        raise NotImplementedError

    def create_space(self) -> str:
        raise NotImplementedError

    def drop_space(self) -> str:
        raise NotImplementedError

    def connection(self) -> str:
        raise NotImplementedError

    def serial(self) -> str:
        raise NotImplementedError

    def placeholder(self, n: int) -> str:
        raise NotImplementedError

    def key_type(self) -> str:
        return "TEXT"

    def _write(self, name: str, service: Service, rows: list[tuple[object, ...]], ncols: int,
               query: str | None = None) -> None:
        self.generation += 1
        table = f"{self.space}.{name.replace('-', '_')}_{self.generation}"
        self.tables[name] = table
        cols = [f"c{i}" for i in range(1, ncols + 1)]
        marks = ", ".join(self.placeholder(i) for i in range(1, ncols + 2))
        create = (f"CREATE TABLE {table} (id {self.serial()}, k {self.key_type()},"
                  f" {', '.join(c + ' TEXT' for c in cols)})")
        insert = f"INSERT INTO {table} (k, {', '.join(cols)}) VALUES ({marks})"
        self.admin([create, (insert, rows)] if rows else [create])
        query = query or (f"query_{service.value} SELECT {', '.join(cols)} FROM {table}"
                          f" WHERE k = {self.param}")
        self.conf(name).write_text(self.connection() + query.format(table=table) + "\n")

    async def list(self, name, service, items):
        self._write(name, service, [(i.lower(), i) for i in items], 1)
        return await self._open(open_table(name, self.kind, str(self.conf(name))))

    async def map(self, name, service, pairs):
        self._write(name, service, map_rows(service, pairs), columns(service))
        return await self._open(open_table(name, self.kind, str(self.conf(name))))

    def rewrite_map(self, name, service, pairs):
        self._write(name, service, map_rows(service, pairs), columns(service))

    def break_source(self, name, service):
        with self.conf(name).open("a") as f:
            f.write("dbpth typo\n")

    async def sources(self, name, items):
        self._write(name, Service.SOURCE, [(i, i) for i in items], 1,
                    query="fetch_source SELECT c1 FROM {table} ORDER BY id")
        return await self._open(open_table(name, self.kind, str(self.conf(name))))

    def stored_rows(self, name: str) -> int:
        """Rows in the SQL table `name` reads now (injections dropped nothing)."""
        return self.admin([], fetch=f"SELECT count(*) FROM {self.tables[name]}")

    async def aclose(self) -> None:
        await super().aclose()
        self.admin([self.drop_space()])


class PostgresBuilder(NetSqlBuilder):
    kind = "postgres"
    param = "$1"

    def admin(self, statements, fetch=None):
        return pg_run(statements, fetch)

    def create_space(self):
        return f"CREATE SCHEMA {self.space}"

    def drop_space(self):
        return f"DROP SCHEMA {self.space} CASCADE"

    def connection(self):
        return pg_conninfo()

    def serial(self):
        return "SERIAL"

    def placeholder(self, n):
        return f"${n}"


class MysqlBuilder(NetSqlBuilder):
    kind = "mysql"
    param = "?"

    def admin(self, statements, fetch=None):
        return my_run(statements, fetch)

    def create_space(self):
        return f"CREATE DATABASE {self.space} CHARACTER SET utf8mb4"

    def drop_space(self):
        return f"DROP DATABASE {self.space}"

    def connection(self):
        return my_conninfo(self.space)

    def serial(self):
        return "INT AUTO_INCREMENT PRIMARY KEY"

    def placeholder(self, n):
        return "%s"

    def key_type(self):
        # MariaDB's default collations ignore case, accents and trailing
        # spaces; a table of addresses wants bytes compared (docs/tables.md).
        return "VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"


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
            "sqlite": SqliteBuilder, "redis": RedisBuilder, "socketmap": SocketmapBuilder,
            "proc": ProcBuilder, "postgres": PostgresBuilder, "mysql": MysqlBuilder,
            "ldap": LdapBuilder}
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


@pytest.fixture(params=["static", "file", "db"])
async def list_builder(request, tmp_path) -> AsyncIterator[Builder]:
    """Backends whose lists the table matches itself (docs/tables.md, Lists and maps)."""
    b = BUILDERS[request.param](tmp_path)
    yield b
    await b.aclose()


@pytest.fixture(params=sorted(set(BUILDERS) - {"socketmap", "ldap"}))
async def fetch_builder(request, tmp_path) -> AsyncIterator[Builder]:
    """Backends that can fetch (a socketmap server cannot list; an ldap table only looks up)."""
    b = _build(request, tmp_path)
    yield b
    await b.aclose()


@pytest.fixture(params=["file", "db", "sqlite", "redis", "proc", "postgres", "mysql", "ldap"])
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
