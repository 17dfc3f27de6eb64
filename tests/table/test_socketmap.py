"""The socketmap backend against a netstring server of ours (socketmap_server.py).

The honest server frames as Postfix does; its misbehaving modes each break
the framing or the protocol one way, and each must be an error (451), never
a value, with the table answering again once the server behaves.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import pytest

from postillion.errors import LookupUnavailable
from postillion.table import ExpandList, Service, TableError, open_table
from postillion.table.backends.socketmap import MAX_REQUEST, parse_address
from postillion.table.errors import BackendError
from tests.table.socketmap_server import MODES, SocketmapServer

DATA = {"alias": {"root": "alice, bob", "k:e,y": "carol"}, "domain": {"example.test": "1"}}


@pytest.fixture
async def server():
    s = SocketmapServer(DATA)
    s.port = await s.start_tcp()
    yield s
    await s.close()


async def opened(config: str, timeout: float = 10.0):
    t = open_table("maps", "socketmap", config, timeout=timeout)
    await t.open()
    return t


async def test_requests_are_netstrings_naming_the_service(server):
    t = await opened(f"inet:127.0.0.1:{server.port}")
    try:
        assert await t.lookup(Service.ALIAS, "ROOT") == ExpandList(("alice", "bob"))
        assert await t.lookup(Service.ALIAS, "k:e,y") == ExpandList(("carol",))
        assert await t.check(Service.DOMAIN, "example.test") is True
        assert await t.check(Service.DOMAIN, "other.test") is False
        assert await t.lookup(Service.ALIAS, "nobody") is None
        assert server.requests[:3] == [b"alias root", b"alias k:e,y", b"domain example.test"]
    finally:
        await t.close()


async def test_unix_socket():
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        path = str(Path(d) / "s")
        s = SocketmapServer(DATA)
        await s.start_unix(path)
        try:
            for config in (path, f"unix:{path}"):
                t = await opened(config)
                assert await t.lookup(Service.ALIAS, "root") == ExpandList(("alice", "bob"))
                await t.close()
        finally:
            await s.close()


@pytest.mark.parametrize("mode", sorted(m for m in MODES if m))
async def test_every_misbehaviour_is_an_error_never_a_value(server, mode):
    t = await opened(f"inet:127.0.0.1:{server.port}", timeout=1.0)   # `longlen` waits
    try:
        server.mode = mode
        with pytest.raises(LookupUnavailable) as info:
            await t.lookup(Service.ALIAS, "root")
        assert info.value.reply.code == 451
        if mode not in ("okempty",):
            with pytest.raises(LookupUnavailable):
                await t.check(Service.ALIAS, "root")
        server.mode = ""
        assert await t.lookup(Service.ALIAS, "root") == ExpandList(("alice", "bob"))
    finally:
        await t.close()


async def test_stall_costs_the_table_timeout_then_heals(server):
    t = await opened(f"inet:127.0.0.1:{server.port}", timeout=0.5)
    try:
        server.stall = True
        started = time.monotonic()
        with pytest.raises(LookupUnavailable, match="timed out"):
            await t.lookup(Service.ALIAS, "root")
        assert time.monotonic() - started < 4
        server.stall = False
        assert await t.lookup(Service.ALIAS, "root") == ExpandList(("alice", "bob"))
    finally:
        await t.close()


async def test_server_restart_heals():
    s = SocketmapServer(DATA)
    port = await s.start_tcp()
    t = await opened(f"inet:127.0.0.1:{port}")
    try:
        await s.close()
        with pytest.raises(LookupUnavailable):
            await t.lookup(Service.ALIAS, "root")
        s2 = SocketmapServer(DATA)
        s2.server = await asyncio.start_server(s2._serve, "127.0.0.1", port)
        try:
            assert await t.lookup(Service.ALIAS, "root") == ExpandList(("alice", "bob"))
        finally:
            await s2.close()
    finally:
        await t.close()


async def test_key_too_long_is_not_sent(server):
    t = await opened(f"inet:127.0.0.1:{server.port}")
    try:
        before = len(server.requests)
        assert await t.lookup(Service.ALIAS, "x" * MAX_REQUEST) is None
        assert len(server.requests) == before
        assert await t.lookup(Service.ALIAS, "root") is not None
    finally:
        await t.close()


async def test_concurrent_lookups_share_a_bounded_pool(server):
    t = await opened(f"inet:127.0.0.1:{server.port}")
    try:
        got = await asyncio.gather(*(t.lookup(Service.ALIAS, "root") for _ in range(50)))
        assert got == [ExpandList(("alice", "bob"))] * 50
    finally:
        await t.close()


@pytest.mark.parametrize("config", ["relative/path", "inet:host", "inet::25", "inet:h:99999",
                                    "inet:h:x"])
def test_bad_addresses(config):
    with pytest.raises(BackendError):
        parse_address(config)
    with pytest.raises(TableError):
        open_table("maps", "socketmap", config)


def test_ipv6_address():
    a = parse_address("inet:[::1]:8000")
    assert (a.host, a.port) == ("::1", 8000) and str(a) == "inet:[::1]:8000"


async def test_nothing_listening_at_open_is_an_error():
    with tempfile.TemporaryDirectory(dir="/tmp") as d, \
            pytest.raises(TableError, match="socketmap"):
        await opened(str(Path(d) / "none"))
