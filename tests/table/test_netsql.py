"""`postgres:` and `mysql:` tables against the real servers: outages, pool, config.

The conformance suite (test_conformance.py) covers what every backend answers;
here is what only a networked table has: a server that goes away (through
`tests/tcpproxy.py`: cut, reset, stall, refuse), the pool's bounds, and the
config file's errors naming `file:line`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from postillion.errors import LookupUnavailable
from postillion.table import ExpandList, Service, TableError, Userinfo, open_table
from postillion.table.netsql import CONNECT_TIMEOUT, POOL_SIZE, QUERY_TIMEOUT, PoolSettings
from tests.table.sqlservers import (
    MY_HOST, MY_PORT, PG_HOST, PG_PORT, my_conninfo, my_run, pg_conninfo, pg_run, unique,
)
from tests.tcpproxy import TcpProxy


@dataclass
class Server:
    """One SQL server with a schema/database of this test's own."""

    kind: str
    space: str
    host: str
    port: int
    tmp: Path
    param: str

    def admin(self, statements, fetch=None):
        return (pg_run if self.kind == "postgres" else my_run)(statements, fetch)

    def connection(self, host: str | None = None, port: int | None = None) -> str:
        host, port = host or self.host, port or self.port
        if self.kind == "postgres":
            return pg_conninfo(host, port)
        return my_conninfo(self.space, host, port)

    def conf(self, body: str, host: str | None = None, port: int | None = None,
             name: str = "net.conf") -> Path:
        path = self.tmp / name
        path.write_text(self.connection(host, port) + body.replace("{s}", self.space)
                        .replace("{p}", self.param))
        return path


QUERIES = ("query_alias SELECT target FROM {s}.aliases WHERE address = {p}\n"
           "query_userinfo SELECT uid, gid, home FROM {s}.users WHERE name = {p}\n")


@pytest.fixture(params=["postgres", "mysql"])
async def server(request, tmp_path) -> AsyncIterator[Server]:
    kind = request.param
    space = unique(f"pt_{kind}")
    if kind == "postgres":
        srv = Server(kind, space, PG_HOST, PG_PORT, tmp_path, "$1")
        srv.admin([f"CREATE SCHEMA {space}"])
    else:
        srv = Server(kind, space, MY_HOST, MY_PORT, tmp_path, "?")
        srv.admin([f"CREATE DATABASE {space} CHARACTER SET utf8mb4"])
    key = "TEXT" if kind == "postgres" else "VARCHAR(255) COLLATE utf8mb4_bin"
    srv.admin([
        f"CREATE TABLE {space}.aliases (address {key}, target TEXT)",
        f"CREATE TABLE {space}.users (name {key}, uid INT, gid INT, home TEXT)",
        f"INSERT INTO {space}.aliases VALUES ('root', 'alice'), ('root', 'bob')",
        f"INSERT INTO {space}.users VALUES ('alice', 1000, 1000, '/home/alice')",
    ])
    yield srv
    srv.admin([f"DROP SCHEMA {space} CASCADE" if kind == "postgres" else
               f"DROP DATABASE {space}"])


@pytest.fixture
async def proxy(server) -> AsyncIterator[TcpProxy]:
    p = await TcpProxy(server.host, server.port).start()
    yield p
    await p.close()


def assert_451(error: LookupUnavailable) -> None:
    assert error.reply.code == 451 and error.reply.enhanced == "4.3.0"


async def test_lookups(server):
    t = open_table("net", server.kind, str(server.conf(QUERIES)))
    await t.open()
    try:
        assert await t.lookup(Service.ALIAS, "ROOT") == ExpandList(("alice", "bob"))
        assert await t.lookup(Service.USERINFO, "alice") == \
            Userinfo("alice", 1000, 1000, "/home/alice")
        assert await t.lookup(Service.USERINFO, "bob") is None
        assert t.serves(Service.ALIAS) and not t.serves(Service.DOMAIN)
    finally:
        await t.close()


async def test_changes_are_seen_without_reload(server):
    """Another host's INSERT is answered by the next lookup: no cache, no reload."""
    t = open_table("net", server.kind, str(server.conf(QUERIES)))
    await t.open()
    try:
        assert await t.lookup(Service.USERINFO, "carol") is None
        server.admin([f"INSERT INTO {server.space}.users VALUES ('carol', 1002, 1002, '/c')"])
        assert await t.lookup(Service.USERINFO, "carol") == Userinfo("carol", 1002, 1002, "/c")
    finally:
        await t.close()


FAULTS = ["cut", "reset", "stall", "refuse"]


@pytest.mark.parametrize("fault", FAULTS)
async def test_outage_is_451_and_recovers(server, proxy, fault):
    conf = server.conf(QUERIES + "query_timeout 1\nconnect_timeout 1\npool_size 2\n",
                       host="127.0.0.1", port=proxy.port)
    t = open_table("net", server.kind, str(conf), timeout=4)
    await t.open()
    try:
        assert await t.lookup(Service.USERINFO, "alice") is not None
        if fault == "refuse":
            await proxy.refuse()
        elif fault == "stall":
            proxy.stall()
        else:
            getattr(proxy, fault)()
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1
        tick = asyncio.create_task(ticker())
        start = time.monotonic()
        for _ in range(1 if fault == "stall" else 3):       # a stall costs 1 s a lookup
            with pytest.raises(LookupUnavailable) as info:
                await t.lookup(Service.USERINFO, "alice")
            assert_451(info.value)
            with pytest.raises(LookupUnavailable):
                await t.check(Service.ALIAS, "root")
        elapsed = time.monotonic() - start
        tick.cancel()
        # each failure within the query/connect timeout (1 s), never "not found",
        # and the event loop kept running meanwhile
        assert elapsed < 6 * 1.5 + 1
        if elapsed > 0.5:       # a stall: the loop ran on while lookups waited
            assert ticks > elapsed * 20
        await proxy.restore()
        assert await t.lookup(Service.USERINFO, "alice") == \
            Userinfo("alice", 1000, 1000, "/home/alice")
        assert await t.lookup(Service.ALIAS, "root") == ExpandList(("alice", "bob"))
        # no stuck connections: at most the pool's, none once closed
        await asyncio.gather(*(t.lookup(Service.USERINFO, "alice") for _ in range(10)))
        assert await proxy.wait_idle(2) <= 2     # the aborted ones are gone too
    finally:
        await t.close()
    assert await proxy.wait_idle(0) == 0


async def test_outage_at_once_then_server_restarts(server, proxy):
    """A restart between two lookups (idle connections dead) costs no lookup a 451."""
    conf = server.conf(QUERIES, host="127.0.0.1", port=proxy.port)
    t = open_table("net", server.kind, str(conf))
    await t.open()
    try:
        await asyncio.gather(*(t.lookup(Service.USERINFO, "alice") for _ in range(4)))
        proxy.cut()
        await proxy.wait_idle(0)
        await proxy.restore()
        assert await t.lookup(Service.USERINFO, "alice") is not None
    finally:
        await t.close()


async def test_pool_bounds_connections(server, proxy):
    conf = server.conf(QUERIES + "pool_size 3\n", host="127.0.0.1", port=proxy.port)
    t = open_table("net", server.kind, str(conf))
    await t.open()
    try:
        peak = 0

        async def one() -> None:
            nonlocal peak
            assert await t.lookup(Service.USERINFO, "alice") is not None
            peak = max(peak, proxy.active)
        await asyncio.gather(*(one() for _ in range(40)))
        assert 1 <= peak <= 3
        assert t.backend.pool is not None and len(t.backend.pool) <= 3
    finally:
        await t.close()
    assert await proxy.wait_idle(0) == 0


async def test_server_down_at_open_is_an_error(server, proxy):
    await proxy.refuse()
    conf = server.conf(QUERIES + "connect_timeout 1\n", host="127.0.0.1", port=proxy.port)
    with pytest.raises(TableError, match=rf"table net: {server.kind}: {server.kind}: cannot connect"):
        await open_table("net", server.kind, str(conf)).open()


async def test_slow_query_is_a_timeout(server):
    slow = "SELECT pg_sleep(3)::text WHERE {p} = 'slow'" if server.kind == "postgres" \
        else "SELECT CAST(SLEEP(3) AS CHAR) FROM DUAL WHERE {p} = 'slow'"
    conf = server.conf(f"query_domain {slow}\nquery_timeout 1\n")
    t = open_table("net", server.kind, str(conf), timeout=5)
    await t.open()
    try:
        start = time.monotonic()
        with pytest.raises(LookupUnavailable, match="query timed out after 1 s"):
            await t.lookup(Service.DOMAIN, "slow")
        assert time.monotonic() - start < 2.5
        assert t.backend.pool is not None and len(t.backend.pool) == 0   # that one was closed
        assert await t.lookup(Service.DOMAIN, "fast") is None            # the next is served
    finally:
        await t.close()


def test_pool_defaults_in_one_place():
    assert PoolSettings() == PoolSettings(POOL_SIZE, CONNECT_TIMEOUT, QUERY_TIMEOUT)
    assert QUERY_TIMEOUT + CONNECT_TIMEOUT <= 10      # within the table's timeout


async def open_conf(server: Server, body: str) -> None:
    t = open_table("net", server.kind, str(server.conf(body)))
    await t.open()
    await t.close()


@pytest.mark.parametrize("body, error", [
    ("query_alias SELECT target FROM {s}.aliases WHERE address = {p}\ndbpth x\n",
     r':\d+: unknown key "dbpth"'),
    ("query_userinfo SELECT uid, home FROM {s}.users WHERE name = {p}\n",
     r":\d+: query_userinfo returns 2 columns, expected 3 \(uid, gid, home\)"),
    ("query_alias SELECT target FROM {s}.nosuch WHERE address = {p}\n",
     r":\d+: query_alias: .*nosuch"),
    ("query_alias SELECT target FROM {s}.aliases\n",
     r":\d+: query_alias must take one"),
    ("query_alias SELECT target FROM {s}.aliases WHERE address = {p} OR target = {p}{p}\n",
     r":\d+: query_alias"),
    ("fetch_source SELECT target FROM {s}.aliases WHERE address = {p}\n",
     r":\d+: fetch_source must take no"),
    ("pool_size 0\nquery_alias SELECT target FROM {s}.aliases WHERE address = {p}\n",
     r':\d+: "pool_size" wants a number >= 1'),
    ("query_timeout soon\nquery_alias SELECT target FROM {s}.aliases WHERE address = {p}\n",
     r':\d+: "query_timeout" wants a number'),
    ("pool_size 2\n", r": no query_<service> and no fetch_source"),
])
async def test_config_errors_name_file_and_line(server, body, error):
    with pytest.raises(TableError, match=rf"table net: {server.kind}: .*net\.conf{error}"):
        await open_conf(server, body)


async def test_postgres_specific_errors(tmp_path):
    conf = tmp_path / "pg.conf"
    conf.write_text("conninfo host=127.0.0.1 bogus=1\nquery_domain SELECT $1::text\n")
    with pytest.raises(TableError, match=r'pg\.conf:1: conninfo: unknown key "bogus"'):
        await open_table("t", "postgres", str(conf)).open()
    conf.write_text(pg_conninfo() + "query_domain SELECT 'x' WHERE 1 = $1\n")
    with pytest.raises(TableError, match=r"pg\.conf:2: query_domain: \$1 is int4, but the key "
                                         r"is text \(write \$1::text\)"):
        await open_table("t", "postgres", str(conf)).open()
    conf.write_text("conninfo host=127.0.0.1 port=x user=postgres\nquery_domain SELECT $1::text\n")
    with pytest.raises(TableError, match=r"pg\.conf:1: conninfo: port wants a number"):
        await open_table("t", "postgres", str(conf)).open()
    # a URI, and quoted values with escapes
    conf.write_text(f"conninfo postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres\n"
                    "query_domain SELECT $1::text WHERE $1 = 'a'\n")
    t = open_table("t", "postgres", str(conf))
    await t.open()
    assert await t.check(Service.DOMAIN, "A") and not await t.check(Service.DOMAIN, "b")
    await t.close()
    conf.write_text("conninfo host = '127.0.0.1' user='post\\'gres' dbname=postgres\n"
                    "query_domain SELECT $1::text\n")
    with pytest.raises(TableError, match="post'gres"):
        await open_table("t", "postgres", str(conf)).open()


@pytest.mark.parametrize("sql, marks", [
    ("SELECT a FROM t WHERE k = ?", "SELECT a FROM t WHERE k = %s"),
    ("SELECT '?' FROM t WHERE k = ? AND a LIKE 'x%'", "SELECT '?' FROM t WHERE k = %s AND a LIKE 'x%%'"),
    ("SELECT `a?` FROM t WHERE k = \"it\\\"s?\" OR k = ?",
     "SELECT `a?` FROM t WHERE k = \"it\\\"s?\" OR k = %s"),
])
def test_mysql_placeholders(sql, marks):
    from postillion.table.backends.mysql import placeholders
    assert placeholders(sql) == (marks, 1)


async def test_table_timeout_first_closes_the_connection(server, proxy):
    """The table's own timeout (shorter here than query_timeout) cancels the
    lookup: the connection it was on is closed, never handed to the next one."""
    conf = server.conf(QUERIES, host="127.0.0.1", port=proxy.port)
    t = open_table("net", server.kind, str(conf), timeout=0.5)
    await t.open()
    try:
        assert await t.lookup(Service.USERINFO, "alice") is not None
        proxy.stall()
        with pytest.raises(LookupUnavailable, match="timed out after 0.5 s"):
            await t.lookup(Service.USERINFO, "alice")
        assert t.backend.pool is not None and len(t.backend.pool) == 0
        await proxy.restore()
        assert await t.lookup(Service.USERINFO, "alice") == \
            Userinfo("alice", 1000, 1000, "/home/alice")
        assert await t.lookup(Service.ALIAS, "root") == ExpandList(("alice", "bob"))
    finally:
        await t.close()
    assert await proxy.wait_idle(0) == 0


async def test_failed_update_keeps_the_old_pool(server, proxy):
    conf = server.conf(QUERIES + "connect_timeout 1\n", host="127.0.0.1", port=proxy.port)
    t = open_table("net", server.kind, str(conf))
    await t.open()
    try:
        assert await t.lookup(Service.USERINFO, "alice") is not None
        conf.write_text(conf.read_text().replace(f"port {proxy.port}", "port 1")
                        .replace(f"port={proxy.port}", "port=1"))
        with pytest.raises(TableError, match="cannot connect"):
            await t.update()
        assert await t.lookup(Service.USERINFO, "alice") is not None
    finally:
        await t.close()
