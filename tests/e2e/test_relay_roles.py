"""Relaying in the process family: `postillion run` as a subprocess starts
an mta process when an action relays; the queue hands it each relayed
envelope with the message as an open descriptor (Relay/Relayed frames), a
bounce comes back through an smtp process (Inject/Injected), and killing
the mta or the queue process loses nothing.

The test process runs the loopback DNS server (dnsmasq, tests/dnsserver.py)
and the receiving MX (tests/mta/peers.py, port 25 of a 127.X.Y.2 of its
own) in its own event loop; the daemon is a real subprocess, started and
stopped from a thread (the `Daemon` helper of tests/e2e/conftest.py).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import pwd
import random
import shutil
import signal
import smtplib
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from postillion.daemon.bounces import GROUP_DELAY
from tests.dnsserver import DnsServers, Zones
from tests.e2e import procs
from tests.e2e.conftest import Daemon, files_under, free_port
from tests.mta.peers import Conn, Peer, dialogue

QUEUE_USER = "_postillion"
SENDER = "alice@example.test"
WAIT = 20.0

#: The routes' connect delays (5 s, 3 s, 2 s by default: tested in tests/mta)
#: would only make these tests wait.
CONFIG = """\
mta nameserver 127.0.0.1 port {dns}
mta limit conn-delay-route 0 reconn-delay-route 0 conn-delay-relay 0
table users {{ alice = "65534:65534:{mail}/alice" }}
listen on 127.0.0.1 port {port}
action "local" maildir "{mail}/%{{user.username}}/Maildir" userbase <users>
action "out" relay
match from any for domain example.test action "local"
match from local for any action "out"
"""


@dataclass
class Relaying:
    """The daemon, its MX's address, and helpers that wait without blocking
    the loop the MX runs in."""

    daemon: Daemon
    mx: str              # the MX host's loopback address

    async def start(self) -> None:
        await asyncio.to_thread(self.daemon.start)

    async def send(self, rcpts: list[str], subject: str) -> None:
        def go() -> None:
            with smtplib.SMTP(self.daemon.host, self.daemon.port, timeout=10) as client:
                client.sendmail(SENDER, rcpts, f"Subject: {subject}\r\n\r\n{subject}\r\n".encode())
        await asyncio.to_thread(go)

    async def wait_log(self, text: str, count: int = 1, timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        while (log := self.daemon.log()).count(text) < count:
            assert time.monotonic() < deadline, f"no {count}x {text!r} in the log:\n{log}"
            await asyncio.sleep(0.05)
        return log

    async def until(self, what: Callable[[], object], timeout: float = WAIT) -> object:
        deadline = time.monotonic() + timeout
        while not (found := what()):
            assert time.monotonic() < deadline, f"timed out waiting:\n{self.daemon.log()}"
            await asyncio.sleep(0.05)
        return found

    def role(self, name: str) -> list[int]:
        assert self.daemon.proc is not None
        return procs.roles(self.daemon.proc.pid, name)

    def queued(self) -> list[Path]:
        return [p for p in files_under(self.daemon.spool / "queue") if p.name != "message"]


@pytest.fixture
async def relaying() -> AsyncIterator[Relaying]:
    """A configured (not started) daemon relaying `remote.test` by MX to
    port 25 of a loopback address of the test's own, and a local alice."""
    assert os.geteuid() == 0, "the mta process's user and port 25 need root (CI runs as root)"
    pwd.getpwnam(QUEUE_USER)     # make test creates it (Makefile: system-user)
    # Not under pytest's tmp_path: deliveries run as nobody (see conftest).
    root = Path(tempfile.mkdtemp(prefix="postillion-relay-", dir="/tmp"))
    os.chmod(root, 0o755)
    mail = root / "mail"
    (mail / "alice").mkdir(parents=True)
    os.chmod(mail, 0o755)
    os.chown(mail / "alice", 65534, 65534)
    mx = f"127.{random.randrange(1, 255)}.{random.randrange(1, 255)}.2"
    dns = DnsServers(root / "dns")
    daemon = None
    try:
        server = dns.start(Zones().mx("remote.test", 10, "mx.remote.test")
                           .host("mx.remote.test", mx))
        port = free_port()
        config = root / "smtpd.conf"
        config.write_text(CONFIG.format(dns=server.port, mail=mail, port=port))
        daemon = Daemon(root=root, mail=mail, config=config, spool=root / "spool",
                        host="127.0.0.1", port=port)
        yield Relaying(daemon, mx)
    finally:
        if daemon is not None:
            await asyncio.to_thread(daemon.stop)
        dns.stop_all()
        shutil.rmtree(root, ignore_errors=True)


def spool_fds(pid: int, spool: Path) -> dict[str, int]:
    """The descriptors `pid` holds on files under the spool: path -> open flags."""
    out = {}
    base = str(spool.resolve())
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        if target.startswith(base):
            flags = next(int(line.split()[1], 8) for line in info.splitlines()
                         if line.startswith("flags:"))
            out[target] = flags
    return out


def line_with(log: str, *parts: str) -> str:
    """The first log line holding every one of `parts`."""
    found = [line for line in log.splitlines() if all(p in line for p in parts)]
    assert found, f"no line with {parts} in:\n{log}"
    return found[0]


def accept_all(conn: Conn) -> object:
    return dialogue(conn)


async def test_the_mta_process_relays_as_the_queue_user(relaying):
    """One mta process, the queue user's (no capabilities, no groups, its
    working directory /), holding nothing of the spool between relays, and
    dying with the parent."""
    r = relaying
    await r.start()
    [mta] = r.role("mta")
    st = procs.status(mta)
    queue_uid = pwd.getpwnam(QUEUE_USER).pw_uid
    assert st["Uid"].split() == [str(queue_uid)] * 4, st["Uid"]
    assert st["CapEff"] == "0" * 16 and st["Groups"] == ""
    assert os.readlink(f"/proc/{mta}/cwd") == "/"
    assert spool_fds(mta, r.daemon.spool) == {}
    assert "mta process, as uid" in r.daemon.log()
    async with Peer(accept_all, host=r.mx, port=25) as peer:
        await r.send(["bob@remote.test"], "relayed")
        log = await r.wait_log("mta delivery")
        await r.until(lambda: peer.conns and peer.conns[0].messages)
    line = line_with(log, "mta delivery", "to=<bob@remote.test>")
    assert "result=Ok" in line and f'relay="{r.mx} (mx.remote.test)"' in line, line
    assert b"Subject: relayed" in peer.conns[0].messages[0]
    assert r.role("mta") == [mta]
    assert spool_fds(mta, r.daemon.spool) == {}        # the message went back when done
    await r.until(lambda: not r.queued())
    await asyncio.to_thread(r.daemon.kill)             # kill -9 of the parent alone...
    assert procs.wait_gone([mta], 2.0) == []           # ...and the mta process goes with it


async def test_a_5xx_at_rcpt_bounces_through_an_smtp_process(relaying):
    """The DSN is built by the queue process and queued through a local
    session in an smtp process (Inject): it reaches alice's Maildir."""
    r = relaying
    await r.start()

    async def refuse_nobody(conn: Conn) -> None:
        await dialogue(conn, rcpt=lambda a: "550 5.1.1 No such user here\r\n"
                       if a.startswith("nobody") else "250 2.1.5 Ok\r\n")

    async with Peer(refuse_nobody, host=r.mx, port=25) as peer:
        await r.send(["nobody@remote.test", "bob@remote.test"], "half refused")
        [dsn_path] = await r.until(lambda: r.daemon.delivered("alice"))
    assert len(peer.conns[0].messages) == 1                    # bob's copy went
    dsn = email.message_from_bytes(dsn_path.read_bytes(), policy=email.policy.default)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn["Subject"] == "Delivery status notification: failed"
    report = dsn.get_payload()[1].as_string().replace("rfc822; ", "rfc822;")
    assert "Final-Recipient: rfc822;nobody@remote.test" in report
    assert "Status: 5.1.1" in report and "No such user here" in report
    log = await r.wait_log("mda delivery")
    assert "result=PermFail" in line_with(log, "mta delivery", "to=<nobody@remote.test>")
    assert "result=Ok" in line_with(log, "queue bounce", "kind=failed", "to=<alice@example.test>")
    assert "smtp connected address=local" in log              # the injecting session
    assert "result=Ok" in line_with(log, "mda delivery", "from=<>", "to=<alice@example.test>")
    await r.until(lambda: not r.queued())


async def test_kill_the_mta_process_a_relay_in_flight_is_retried(relaying):
    """kill -9 of the mta process while the MX holds a message after its
    dot: the parent restarts the mta process, the envelope it had is
    relayed again by the new one (twice at worst, never lost), and mail
    sent after that is relayed."""
    r = relaying
    await r.start()
    [mta] = r.role("mta")

    async def stalling(conn: Conn) -> None:
        if len(peer.conns) == 1:
            await conn.send("220 peer.example.test ESMTP scripted\r\n")
            while (line := await conn.line()).upper()[:4] != "DATA":
                reply = "250-peer\r\n250 PIPELINING\r\n" if line[:4].upper() == "EHLO" else "250 Ok\r\n"
                await conn.send(reply)
            await conn.send("354 go ahead\r\n")
            await conn.data()
            # No reply after the dot: the connection ends when its process does.
            await asyncio.wait_for(conn.reader.read(), WAIT)
            return
        await dialogue(conn)

    async with Peer(stalling, host=r.mx, port=25) as peer:
        await r.send(["bob@remote.test"], "in flight")
        await r.until(lambda: peer.conns and peer.conns[0].messages)
        # What the mta process holds of the spool: the one message it was handed, read-only.
        held = spool_fds(mta, r.daemon.spool)
        assert len(held) == 1, held
        [(path, flags)] = held.items()
        assert path.endswith("/message") and flags & os.O_ACCMODE == os.O_RDONLY
        procs.kill(mta)
        await r.wait_log(f"mta process (pid {mta}) exited (killed by signal 9); restarting it in")
        [new] = await r.until(lambda: [p for p in r.role("mta") if p != mta])
        await r.wait_log("result=Ok")
        await r.send(["carol@remote.test"], "after the restart")
        log = await r.wait_log("result=Ok", count=2)
    assert "result=Ok" in line_with(log, "mta delivery", "to=<bob@remote.test>")
    assert "result=Ok" in line_with(log, "mta delivery", "to=<carol@remote.test>")
    subjects = [line for c in peer.conns for m in c.messages for line in m.split(b"\r\n")
                if line.startswith(b"Subject:")]
    assert subjects.count(b"Subject: in flight") == 2, subjects        # once unanswered, once Ok
    assert b"Subject: after the restart" in subjects
    assert "sending it again" in line_with(log, "queue relay-lost evpid=")
    assert procs.status(new)["Uid"].split()[0] == str(pwd.getpwnam(QUEUE_USER).pw_uid)
    await r.until(lambda: not r.queued())


async def test_kill_the_queue_process_the_new_one_reconnects_to_the_mta_process(relaying):
    """kill -9 of the queue process: the parent hands the running mta
    process a channel to the new queue process (QueuePeer "queue") and the
    new queue process its end (QueuePeer "mta" is for an mta restart);
    mail accepted meanwhile and after is relayed by the same mta process."""
    r = relaying
    await r.start()
    [mta] = r.role("mta")
    [queue] = r.role("queue")
    async with Peer(accept_all, host=r.mx, port=25) as peer:
        await r.send(["bob@remote.test"], "before")
        await r.wait_log("result=Ok")
        procs.kill(queue)
        await r.wait_log(f"queue process (pid {queue}) exited (killed by signal 9)")
        await r.send(["carol@remote.test"], "while no queue process runs")
        await r.until(lambda: [p for p in r.role("queue") if p != queue])
        await r.wait_log("to=<carol@remote.test>")
        await r.send(["dave@remote.test"], "after")
        log = await r.wait_log("result=Ok", count=3)
        await r.until(lambda: sum(len(c.messages) for c in peer.conns) >= 3)
    assert r.role("mta") == [mta]                    # the same mta process all along
    for rcpt in ("bob", "carol", "dave"):
        assert "result=Ok" in line_with(log, "mta delivery", f"to=<{rcpt}@remote.test>")
    await r.until(lambda: not r.queued())


async def test_an_smtp_process_dying_with_a_bounce_in_hand_costs_no_wait(relaying):
    """The DSN is handed to an smtp process (Inject) that dies before it
    answers: the queue hands it to the next one as soon as there is one
    (the parent restarts them), rather than waiting out its timeout."""
    r = relaying
    await r.start()
    smtp = r.role("smtp")

    async def refuse(conn: Conn) -> None:
        await dialogue(conn, rcpt=lambda a: "550 5.1.1 No such user here\r\n")

    async with Peer(refuse, host=r.mx, port=25):
        await r.send(["nobody@remote.test"], "refused")
        await r.wait_log("result=PermFail")
    for pid in smtp:                     # frozen: an Inject sent now is never answered
        os.kill(pid, signal.SIGSTOP)
    await asyncio.sleep(GROUP_DELAY + 1.0)       # the DSN is built and handed over
    for pid in smtp:
        procs.kill(pid)
    [dsn_path] = await r.until(lambda: r.daemon.delivered("alice"))
    assert b"Delivery status notification: failed" in dsn_path.read_bytes()
    log = await r.wait_log("queue bounce")
    assert "result=Ok" in line_with(log, "queue bounce", "to=<alice@example.test>")
    await r.until(lambda: not r.queued())
