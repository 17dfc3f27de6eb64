"""`postillion table lookup` and `postillion check` with redis, socketmap and proc tables.

Run as subprocesses, as an administrator would, against the real Redis,
a socketmap server of ours (in this test's event loop) and our proc helper.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import uuid
from pathlib import Path

import pytest

from tests.table.conftest import (
    shared_helper,
    REDIS_HOST,
    REDIS_PORT,
    drop_prefix,
    redis_client,
)
from tests.table.socketmap_server import SocketmapServer


async def postillion(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "postillion.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def site(tmp_path: Path):
    client = redis_client()
    prefix = f"postillion-test:{uuid.uuid4().hex}:"
    client.set(f"{prefix}alias:root", "alice, bob")
    (tmp_path / "redis.conf").write_text(f"master {REDIS_HOST}\nmaster_port {REDIS_PORT}\n"
                                         f"query_alias GET {prefix}alias:%s\n")
    # `check` as root runs the helper as the queue user, as the daemon does.
    shared = shared_helper({"services": ["alias"], "map": {"root": "carol"}, "sources": []})
    top = shared.__enter__()
    server = SocketmapServer({"alias": {"root": "dave"}})
    port = await server.start_tcp()
    helper = shlex.join([str(top / "table-json"), str(top / "data.json")])
    (tmp_path / "smtpd.conf").write_text(
        "table r redis:redis.conf\n"
        f"table s socketmap:inet:127.0.0.1:{port}\n"
        f"table p proc:{json.dumps(helper)}\n"
        "listen on 127.0.0.1 port 2525\n"
        'action "local" maildir alias <r>\n'
        'action "other" maildir alias <s>\n'
        'action "third" maildir alias <p>\n'
        'match for domain "a.test" action "local"\n'
        'match for domain "b.test" action "other"\n'
        'match for domain "c.test" action "third"\n')
    yield tmp_path, server
    await server.close()
    shared.__exit__(None, None, None)
    drop_prefix(client, prefix)
    client.close()


@pytest.mark.parametrize("table, expected", [("r", "alice, bob"), ("s", "dave"), ("p", "carol")])
async def test_table_lookup(site, table, expected):
    path, _ = site
    code, out, err = await postillion("table", "lookup", "-f", str(path / "smtpd.conf"),
                                      table, "alias", "ROOT")
    assert code == 0, err
    assert out.strip() == expected


async def test_check_opens_them(site):
    path, server = site
    code, out, err = await postillion("check", "-f", str(path / "smtpd.conf"))
    assert code == 0, (out, err)
    await server.close()
    (path / "redis.conf").write_text("master 127.0.0.1\nmastr_port 1\n")
    code, out, err = await postillion("check", "-f", str(path / "smtpd.conf"))
    assert code != 0
    assert 'redis.conf:2: unknown key "mastr_port"' in err
    assert "socketmap" in err
