"""The proc backend with our helper script (proc_helper.py) speaking OpenSMTPD's protocol.

Besides the conformance suite (conftest.py, ProcBuilder): the handshake,
many requests in flight, and helpers that exit, garble, stall or lie about
ids -- each a 451 for the lookups it was asked, then a new helper for the
next ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
import time

import pytest

from postillion.errors import LookupUnavailable
from postillion.table import ExpandList, Service, TableError, open_table
from postillion.table.backends import proc as proc_backend
from tests.table.conftest import PROC_HELPER

DATA = {"services": ["alias", "source"], "map": {"root": "alice, bob", "a|b": "carol"},
        "sources": ["192.0.2.1"]}


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(DATA))
    return path


def command(data, *extra: str) -> str:
    return shlex.join([sys.executable, str(PROC_HELPER), str(data), *extra])


async def opened(config: str, timeout: float = 10.0):
    t = open_table("aliases", "proc", config, timeout=timeout)
    await t.open()
    return t


async def eventually(t, key="root", seconds=5.0):
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await t.lookup(Service.ALIAS, key)
        except LookupUnavailable:
            assert time.monotonic() < deadline, "the helper was not restarted"
            await asyncio.sleep(0.05)


async def test_lookup_check_fetch_and_registered_services(data):
    t = await opened(command(data))
    try:
        assert t.serves(Service.ALIAS) and t.serves(Service.SOURCE)
        assert not t.serves(Service.USERINFO)      # not registered by the helper
        assert await t.lookup(Service.ALIAS, "ROOT") == ExpandList(("alice", "bob"))
        assert await t.lookup(Service.ALIAS, "a|b") == ExpandList(("carol",))
        assert await t.check(Service.ALIAS, "root") is True
        assert await t.check(Service.ALIAS, "nobody") is False
        assert str((await t.fetch(Service.SOURCE)).address) == "192.0.2.1"
    finally:
        await t.close()


async def test_many_requests_in_flight(data):
    t = await opened(command(data))
    try:
        keys = ["root", "nobody"] * 50
        got = await asyncio.gather(*(t.lookup(Service.ALIAS, k) for k in keys))
        assert got == [ExpandList(("alice", "bob")), None] * 50
    finally:
        await t.close()


@pytest.mark.parametrize("mode", ["exit", "garble", "wrongid", "stall"])
async def test_misbehaving_helper_is_an_error_then_restarted(data, tmp_path, mode, monkeypatch):
    monkeypatch.setattr(proc_backend, "QUERY_TIMEOUT", 0.5)
    mode_file = tmp_path / "mode"
    mode_file.write_text("")
    t = await opened(command(data, f"@{mode_file}"))
    try:
        first = t.backend._helper.proc
        assert await t.lookup(Service.ALIAS, "root") == ExpandList(("alice", "bob"))
        mode_file.write_text(mode)
        started = time.monotonic()
        with pytest.raises(LookupUnavailable) as info:
            await t.lookup(Service.ALIAS, "root")
        assert info.value.reply.code == 451
        assert time.monotonic() - started < 4      # QUERY_TIMEOUT, not the table's 10 s
        mode_file.write_text("")
        assert await eventually(t) == ExpandList(("alice", "bob"))
        assert t.backend._helper.proc is not first
        await asyncio.wait_for(first.wait(), 5)         # the old one is gone, and reaped
    finally:
        await t.close()


async def test_pending_requests_all_fail_when_the_helper_dies(data, tmp_path):
    mode_file = tmp_path / "mode"
    mode_file.write_text("stall")
    t = await opened(command(data, f"@{mode_file}"))
    try:
        pending = [asyncio.ensure_future(t.lookup(Service.ALIAS, "root")) for _ in range(5)]
        await asyncio.sleep(0.2)
        t.backend._helper.proc.kill()
        results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 5)
        assert all(isinstance(r, LookupUnavailable) for r in results)
        mode_file.write_text("")
        assert await eventually(t) == ExpandList(("alice", "bob"))
    finally:
        await t.close()


@pytest.mark.parametrize("mode, error", [
    ("badservice", 'unknown service "teleport"'),
    ("slowstart", "no register|ready"),
])
async def test_bad_handshake_is_an_error_at_open(data, mode, error, monkeypatch):
    monkeypatch.setattr(proc_backend, "HANDSHAKE_TIMEOUT", 0.5)
    with pytest.raises(TableError, match=rf"table aliases: proc: .*{error}"):
        await opened(command(data, mode))


async def test_missing_program_is_an_error_at_open(tmp_path):
    with pytest.raises(TableError, match="No such file"):
        await opened(str(tmp_path / "no-such-helper"))


async def test_never_through_a_shell(data, tmp_path):
    marker = tmp_path / "marker"
    t = await opened(command(data) + f" ; touch {marker} $(touch {marker})")
    try:
        assert await t.lookup(Service.ALIAS, "root") == ExpandList(("alice", "bob"))
        assert not marker.exists()
    finally:
        await t.close()


async def test_close_stops_the_helper(data):
    t = await opened(command(data))
    pid = t.backend._helper.proc.pid
    await t.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
