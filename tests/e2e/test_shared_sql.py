"""Two daemons on one PostgreSQL store (docs/tables.md, postgres and mysql).

Separate spools and ports, the same schema: an account added with one SQL
statement is accepted by both within a second, without reload -- as a
recipient and as an AUTH login.  Then the store goes away for one of them
(a TCP proxy we control): 451 4.3.0 there, the other unaffected, and the
first answers again once the store is back, without a restart.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import smtplib
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import bcrypt
import pytest

from tests.e2e.conftest import DOMAIN, HOSTNAME, Daemon, delivery_ids, free_port
from tests.table.sqlservers import PG_HOST, PG_PORT, pg_conninfo, pg_run, unique
from tests.tcpproxy import TcpProxy

CONFIG = """\
table domains postgres:{backend}
table virtuals postgres:{backend}
table users postgres:{backend}
table creds postgres:{backend}
listen on 127.0.0.1 port {port} hostname {hostname} auth-optional <creds> insecure-auth
action "local_mail" maildir virtual <virtuals> userbase <users>
match from any for domain <domains> action "local_mail"
match auth from any for domain <domains> action "local_mail"
"""

QUERIES = """\
query_domain SELECT name FROM {s}.domains WHERE name = $1
query_alias SELECT name FROM {s}.accounts WHERE address = $1
query_userinfo SELECT uid, gid, home FROM {s}.accounts WHERE name = $1
query_credentials SELECT name, hash FROM {s}.accounts WHERE name = $1
connect_timeout 1
query_timeout 1
"""

PASSWORD = "shared store"


def rcpt(daemon: Daemon, address: str) -> tuple[int, bytes]:
    with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as client:
        client.ehlo("client.example.net")
        client.mail("bob@example.net")
        return client.docmd(f"RCPT TO:<{address}>")


def auth(daemon: Daemon, user: str, password: str) -> int:
    with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as client:
        client.ehlo("client.example.net")
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return client.docmd("AUTH", f"PLAIN {token}")[0]


@pytest.fixture
async def store() -> AsyncIterator[str]:
    space = unique("pt_shared")
    await asyncio.to_thread(pg_run, [
        f"CREATE SCHEMA {space}",
        f"CREATE TABLE {space}.domains (name TEXT)",
        (f"CREATE TABLE {space}.accounts"
         " (name TEXT, address TEXT, uid INT, gid INT, home TEXT, hash TEXT)"),
        f"INSERT INTO {space}.domains VALUES ('{DOMAIN}')",
    ])
    yield space
    await asyncio.to_thread(pg_run, [f"DROP SCHEMA {space} CASCADE"])


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    p = await TcpProxy(PG_HOST, PG_PORT).start()
    yield p
    await p.close()


def make_daemon(root: Path, name: str, space: str, pg_port: int) -> Daemon:
    home = root / name
    home.mkdir(mode=0o755)
    backend = home / "postgres.conf"
    backend.write_text(pg_conninfo(port=pg_port) + QUERIES.format(s=space))
    port = free_port()
    config = home / "postillion.conf"
    config.write_text(CONFIG.format(backend=backend, port=port, hostname=HOSTNAME))
    return Daemon(root=home, mail=root / "mail", config=config, spool=home / "spool",
                  host="127.0.0.1", port=port)


async def until(check, want, timeout: float = 1.0):
    """Poll `check` (blocking, run in a thread) until it returns `want`."""
    deadline = time.monotonic() + timeout
    while True:
        got = await asyncio.to_thread(check)
        if got == want or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)


async def test_two_daemons_share_one_store(store, proxy):
    root = Path(tempfile.mkdtemp(prefix="postillion-shared-", dir="/tmp"))
    os.chmod(root, 0o755)
    (root / "mail").mkdir(mode=0o755)
    first = make_daemon(root, "first", store, proxy.port)      # through the proxy
    second = make_daemon(root, "second", store, PG_PORT)       # straight to the server
    try:
        await asyncio.gather(asyncio.to_thread(first.start), asyncio.to_thread(second.start))
        for d in (first, second):
            assert (await asyncio.to_thread(rcpt, d, f"carol@{DOMAIN}"))[0] == 550

        uid, gid = delivery_ids()
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
        await asyncio.to_thread(pg_run, [
            (f"INSERT INTO {store}.accounts VALUES ($1, $2, $3, $4, $5, $6)",
             [("carol", f"carol@{DOMAIN}", uid, gid, str(root / "mail" / "carol"), hashed)])])
        start = time.monotonic()
        for d in (first, second):
            code = await until(lambda d=d: rcpt(d, f"carol@{DOMAIN}")[0], 250)
            assert code == 250, d.log()
            assert await until(lambda d=d: auth(d, "carol", PASSWORD), 235) == 235
        assert time.monotonic() - start < 2.0
        assert await asyncio.to_thread(auth, second, "carol", "wrong") == 535

        # The store goes away for the first daemon only.
        proxy.stall()
        code, text = await asyncio.to_thread(rcpt, first, f"carol@{DOMAIN}")
        assert (code, text[:5]) == (451, b"4.3.0"), text
        assert (await asyncio.to_thread(rcpt, second, f"carol@{DOMAIN}"))[0] == 250
        await proxy.refuse()
        code, text = await asyncio.to_thread(rcpt, first, f"carol@{DOMAIN}")
        assert (code, text[:5]) == (451, b"4.3.0"), text
        await proxy.restore()
        assert await until(lambda: rcpt(first, f"carol@{DOMAIN}")[0], 250, 3.0) == 250, first.log()[-3000:]
        assert first.proc is not None and first.proc.poll() is None
        for d in (first, second):
            assert "Traceback" not in d.log()
    finally:
        await asyncio.gather(asyncio.to_thread(first.stop), asyncio.to_thread(second.stop))
        shutil.rmtree(root, ignore_errors=True)
