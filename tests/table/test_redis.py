"""The redis backend against the real server at 127.0.0.1:6379.

Keys live under a prefix unique to each test and are removed afterwards;
the tests fail (never skip) if no Redis server is running.  Outages go
through a TCP proxy the test controls (tcpproxy.py).
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import pytest

from postillion.errors import LookupUnavailable
from postillion.table import (
    Domain,
    ExpandList,
    Service,
    TableError,
    Userinfo,
    open_table,
)
from tests.table.conftest import REDIS_HOST, REDIS_PORT, drop_prefix, redis_client
from tests.table.tcpproxy import TcpProxy


@pytest.fixture
def store():
    client = redis_client()
    prefix = f"postillion-test:{uuid.uuid4().hex}:"
    yield client, prefix
    drop_prefix(client, prefix)
    client.close()


def conf(tmp_path, text: str, name: str = "redis.conf") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_queries_and_reply_shapes(tmp_path, store):
    client, p = store
    client.set(f"{p}alias:root", "alice, bob")
    client.hset(f"{p}user:carol", mapping={"uid": 1002, "gid": 1002, "home": "/home/carol"})
    client.hset(f"{p}user:half", mapping={"uid": 1003})
    client.sadd(f"{p}domains", "example.test")
    client.rpush(f"{p}list:team", "alice", "bob")
    t = open_table("t", "redis", conf(tmp_path,
        f"master {REDIS_HOST}\nmaster_port {REDIS_PORT}\n"
        f"query_alias GET {p}alias:%s\n"
        f"query_userinfo HMGET {p}user:%s uid gid home\n"
        f"query_domain SISMEMBER {p}domains %s\n"
        f"query_mailaddrmap LRANGE {p}list:%s 0 -1\n"))
    await t.open()
    try:
        assert await t.lookup(Service.ALIAS, "ROOT") == ExpandList(("alice", "bob"))
        assert await t.lookup(Service.ALIAS, "nobody") is None
        assert await t.lookup(Service.USERINFO, "carol") == \
            Userinfo("carol", 1002, 1002, "/home/carol")
        assert await t.lookup(Service.USERINFO, "nobody") is None     # all nil: not found
        with pytest.raises(LookupUnavailable):                        # some nil: an error
            await t.lookup(Service.USERINFO, "half")
        assert await t.check(Service.DOMAIN, "Example.Test") is True
        assert await t.check(Service.DOMAIN, "other.test") is False
        assert await t.lookup(Service.DOMAIN, "example.test") == Domain("example.test")
        value = await t.lookup(Service.MAILADDRMAP, "team")
        assert value is not None and len(value.patterns) == 2
    finally:
        await t.close()


async def test_default_query_in_another_database(tmp_path, store):
    client, p = store
    db9 = type(client)(REDIS_HOST, REDIS_PORT, db=9)
    key = f"{p}someone"
    db9.set(f"alias:{key}", "bob")
    try:
        t = open_table("t", "redis", conf(tmp_path, "database 9\n"))
        await t.open()
        assert await t.lookup(Service.ALIAS, key) == ExpandList(("bob",))
        await t.close()
        t0 = open_table("t", "redis", conf(tmp_path, "database 0\n", "db0.conf"))
        await t0.open()
        assert await t0.lookup(Service.ALIAS, key) is None
        await t0.close()
    finally:
        db9.delete(f"alias:{key}")
        db9.close()


@pytest.mark.parametrize("text, error", [
    ("master 127.0.0.1\ndbpth x\n", r"redis.conf:2: unknown key \"dbpth\""),
    ("query_alias GET alias:key\n", r"redis.conf:1: query_alias has no \"%s\""),
    ("master_port 99999\n", r"redis.conf:1: \"master_port\" wants a port"),
    ("pool_size 0\n", r"redis.conf:1: \"pool_size\" wants a number >= 1"),
])
async def test_config_errors_name_file_and_line(tmp_path, text, error):
    t = open_table("t", "redis", conf(tmp_path, text))
    with pytest.raises(TableError, match=error):
        await t.open()


async def test_server_down_at_open_is_an_error(tmp_path):
    t = open_table("t", "redis", conf(tmp_path,
        f"master 127.0.0.1\nmaster_port {closed_port()}\nconnect_timeout 1\n"))
    with pytest.raises(TableError, match=r"table t: redis: .*redis.conf"):
        await t.open()


async def test_slave_answers_when_the_master_is_down(tmp_path, store):
    client, p = store
    client.set(f"{p}alias:root", "alice")
    t = open_table("t", "redis", conf(tmp_path,
        f"master 127.0.0.1\nmaster_port {closed_port()}\n"
        f"slave {REDIS_HOST}\nslave_port {REDIS_PORT}\nconnect_timeout 1\n"
        f"query_alias GET {p}alias:%s\n"))
    await t.open()
    try:
        assert await t.lookup(Service.ALIAS, "root") == ExpandList(("alice",))
    finally:
        await t.close()


@pytest.mark.parametrize("mode", ["cut", "stall", "reset", "refuse"])
async def test_outage_is_temporary_and_heals(tmp_path, store, mode):
    """451 during the outage, each lookup bounded; answers again after, no reload."""
    client, p = store
    client.set(f"{p}alias:root", "alice")
    proxy = TcpProxy(REDIS_HOST, REDIS_PORT)
    port = await proxy.start()
    t = open_table("t", "redis", conf(tmp_path,
        f"master 127.0.0.1\nmaster_port {port}\npool_size 2\n"
        f"connect_timeout 1\nquery_timeout 1\nquery_alias GET {p}alias:%s\n"))
    await t.open()
    try:
        assert await t.lookup(Service.ALIAS, "root") == ExpandList(("alice",))
        await proxy.fail(mode)
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(LookupUnavailable) as info:
                await t.lookup(Service.ALIAS, "root")
            assert info.value.reply.code == 451 and info.value.reply.enhanced == "4.3.0"
            assert time.monotonic() - started < 4      # its own timeout, not the table's 10 s
        await proxy.restore()
        deadline = time.monotonic() + 5
        while True:
            try:
                value = await t.lookup(Service.ALIAS, "root")
                break
            except LookupUnavailable:
                assert time.monotonic() < deadline, "the table did not recover"
                await asyncio.sleep(0.1)
        assert value == ExpandList(("alice",))
        # no stuck connections: a burst larger than the pool is answered
        results = await asyncio.gather(*(t.lookup(Service.ALIAS, "root") for _ in range(20)))
        assert results == [ExpandList(("alice",))] * 20
    finally:
        await t.close()
        await proxy.close()


async def test_a_stalled_server_costs_only_its_own_lookups(tmp_path, store):
    client, p = store
    client.set(f"{p}alias:root", "alice")
    proxy = TcpProxy(REDIS_HOST, REDIS_PORT)
    port = await proxy.start()
    slow = open_table("slow", "redis", conf(tmp_path,
        f"master 127.0.0.1\nmaster_port {port}\nquery_timeout 3\nconnect_timeout 1\n"
        f"query_alias GET {p}alias:%s\n", "slow.conf"))
    fast = open_table("fast", "redis", conf(tmp_path,
        f"query_alias GET {p}alias:%s\n", "fast.conf"))
    await slow.open()
    await fast.open()
    try:
        await proxy.fail("stall")
        stalled = asyncio.ensure_future(slow.lookup(Service.ALIAS, "root"))
        await asyncio.sleep(0.1)
        for _ in range(10):
            assert await fast.lookup(Service.ALIAS, "root") == ExpandList(("alice",))
        assert not stalled.done()        # the other table answered while this one waits
        with pytest.raises(LookupUnavailable):
            await stalled
    finally:
        await slow.close()
        await fast.close()
        await proxy.close()


async def test_update_rereads_the_config(tmp_path, store):
    client, p = store
    client.set(f"{p}a:root", "alice")
    client.set(f"{p}b:root", "bob")
    path = conf(tmp_path, f"query_alias GET {p}a:%s\n")
    t = open_table("t", "redis", path)
    await t.open()
    try:
        assert await t.lookup(Service.ALIAS, "root") == ExpandList(("alice",))
        conf(tmp_path, f"query_alias GET {p}b:%s\n")
        await t.update()
        assert await t.lookup(Service.ALIAS, "root") == ExpandList(("bob",))
        conf(tmp_path, "query_alias GET nothing\n")
        with pytest.raises(TableError, match="redis.conf:1"):
            await t.update()
        assert await t.lookup(Service.ALIAS, "root") == ExpandList(("bob",))
    finally:
        await t.close()
