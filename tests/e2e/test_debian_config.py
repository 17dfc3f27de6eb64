"""Debian's stock OpenSMTPD configuration runs unchanged.

The `/etc/smtpd.conf` that Debian's `opensmtpd` package ships is read from
the package itself, fetched and unpacked but never installed
(tests/debpkg.py): `postillion check` accepts it, and `postillion run -f`
on it listens on localhost port 25 (127.0.0.1: `localhost` without
`inet6`, docs/configuration.md), delivers a
message for a system user to that user's ~/Maildir (as that user), and
queues a message for a remote destination for relaying and relays it.

The file reads:

    table aliases file:/etc/aliases
    listen on localhost
    action "local" maildir alias <aliases>
    action "relay" relay
    match for local action "local"
    match from local for any action "relay"

so the test needs, as the package's own service would:

* root, and port 25 free on 127.0.0.1 -- a port in use fails the test
  loudly (something else is listening: stop it), it is never skipped;
* /etc/aliases: when the machine has none, the test writes a minimal one
  (`postmaster: root`) and removes it afterwards; an existing one is left
  alone;
* a system user with a home: one is made (useradd --create-home) and
  removed with its home (tests/sysuser.py).

The remote destination is an address literal on loopback
(`someone@[127.X.Y.Z]`), received by a scripted MX on its port 25: the
stock file has no `mta nameserver`, so a domain name would be looked up
through the machine's resolver, off loopback; a literal needs no DNS.
Every process of the daemon is gone when the test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import random
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.debpkg import shipped_file
from tests.e2e import procs
from tests.e2e.conftest import Daemon
from tests.mta.peers import Peer, dialogue
from tests.sysuser import user_with_home

ALIASES = Path("/etc/aliases")
MINIMAL_ALIASES = "postmaster: root\n"
WAIT = 20.0


@contextlib.contextmanager
def aliases_file() -> Iterator[None]:
    """/etc/aliases as the stock file needs it: left alone when present,
    else a minimal one for the test's duration."""
    if ALIASES.exists():
        yield
        return
    ALIASES.write_text(MINIMAL_ALIASES)
    try:
        yield
    finally:
        ALIASES.unlink(missing_ok=True)


def assert_port_25_free() -> None:
    """`listen on localhost` is port 25 of 127.0.0.1; a daemon already
    there would make this test about that daemon."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", 25))
        except OSError as e:
            raise AssertionError(
                f"port 25 on 127.0.0.1 is taken ({e.strerror}): Debian's stock smtpd.conf "
                "listens there; stop whatever holds it (`ss -ltnp sport = :25`)") from None


def send(sender: str, rcpt: str, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", 25, timeout=10) as client:
        client.sendmail(sender, [rcpt], f"Subject: {subject}\r\n\r\n{subject}\r\n".encode())


def stop(daemon: Daemon) -> list[int]:
    """Stop the daemon; the pids of its family still alive after (killed)."""
    family = procs.children(daemon.proc.pid) if daemon.proc is not None else []
    daemon.stop()
    still = procs.wait_gone(family, 5.0)
    for pid in still:
        procs.kill(pid)
    return still


async def deliver_and_relay(daemon: Daemon, user: pwd.struct_passwd, mx: str) -> None:
    log = daemon.log()
    assert "listening on 127.0.0.1:25" in log, log
    # A local system user: delivered to ~/Maildir, as that user.
    maildir = Path(user.pw_dir) / "Maildir" / "new"
    await asyncio.to_thread(send, "root@localhost", f"{user.pw_name}@localhost", "local")
    deadline = time.monotonic() + WAIT
    while not (maildir.is_dir() and (delivered := sorted(maildir.iterdir()))):
        assert time.monotonic() < deadline, daemon.log()
        await asyncio.sleep(0.05)
    [path] = delivered
    assert b"Subject: local" in path.read_bytes()
    assert path.stat().st_uid == user.pw_uid
    # A remote destination, from local: queued for the relay action, relayed.
    rcpt = f"someone@[{mx}]"
    async with Peer(lambda conn: dialogue(conn), host=mx, port=25) as peer:
        await asyncio.to_thread(send, f"{user.pw_name}@localhost", rcpt, "remote")
        deadline = time.monotonic() + WAIT
        while "mta delivery" not in (log := daemon.log()):
            assert time.monotonic() < deadline, log
            await asyncio.sleep(0.05)
    assert "smtp envelope evpid=" in log and f"to=<{rcpt}>" in log, log
    line = next(line for line in log.splitlines() if "mta delivery" in line)
    assert f"to=<{rcpt}>" in line and "result=Ok" in line, line
    [conn] = peer.conns
    assert b"Subject: remote" in conn.messages[0]


async def test_debians_stock_smtpd_conf_runs_unchanged():
    assert os.geteuid() == 0, "port 25 and delivery as a system user need root (CI runs as root)"
    conf = await asyncio.to_thread(shipped_file, "opensmtpd", "etc/smtpd.conf")
    text = conf.read_text()
    assert "table aliases file:/etc/aliases" in text and "listen on localhost" in text, text
    assert_port_25_free()
    root = Path(tempfile.mkdtemp(prefix="postillion-debian-", dir="/tmp"))
    os.chmod(root, 0o755)
    mx = f"127.{random.randrange(1, 255)}.{random.randrange(1, 255)}.{random.randrange(2, 255)}"
    daemon = Daemon(root=root, mail=root, config=conf, spool=root / "spool",
                    host="127.0.0.1", port=25)
    try:
        with aliases_file(), user_with_home() as user:
            checked = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "postillion.cli", "check", "-f", str(conf)],
                capture_output=True, text=True, timeout=60)
            assert checked.returncode == 0, checked.stdout + checked.stderr
            try:
                await asyncio.to_thread(daemon.start)
                await deliver_and_relay(daemon, user, mx)
            finally:
                # Before the user goes: its delivery worker runs as it.
                still = await asyncio.to_thread(stop, daemon)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert still == [], f"processes left running: {still}"
