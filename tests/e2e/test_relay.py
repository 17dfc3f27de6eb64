"""Mail leaves the host: the daemon relays by MX, through a real DNS server
on loopback (dnsmasq, tests/dnsserver.py), to receiving servers on port 25
of their own loopback addresses; failures come back to a local sender as
RFC 3464 bounces.

The daemon runs in the test's event loop (one process: the agents are the
same as in the mta process), so the peers' view and the daemon's can be
compared directly.  Each test draws its own 127.X.Y.0/24 so that runs on
one machine do not meet on port 25.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import random
import smtplib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from postillion.config import parse
from postillion.daemon import Daemon
from postillion.queue.envelope import Envelope
from tests.dnsserver import DnsServers, Zones
from tests.e2e.conftest import free_port
from tests.mta.peers import Conn, Peer, dialogue

SENDER = "alice@example.test"


def net() -> str:
    """A /24 of our own on loopback for one test's MX hosts."""
    return f"127.{random.randrange(1, 255)}.{random.randrange(1, 255)}"


@dataclass
class World:
    daemon: Daemon
    port: int
    mail: Path
    spool: Path
    loop_log: list[str]

    async def send(self, rcpts: list[str], sender: str = SENDER, body: str = "hello",
                   options: tuple[str, ...] = (), rcpt_options: tuple[str, ...] = ()) -> None:
        def go() -> None:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as client:
                client.ehlo("client.test")
                client.sendmail(sender, rcpts, f"Subject: {body}\r\n\r\n{body}\r\n".encode(),
                                mail_options=list(options), rcpt_options=list(rcpt_options))
        await asyncio.to_thread(go)

    def mailbox(self, user: str) -> list[Path]:
        new = self.mail / user / "Maildir" / "new"
        return sorted(new.iterdir()) if new.is_dir() else []

    async def wait_mailbox(self, user: str, count: int = 1, timeout: float = 20) -> list[Path]:
        deadline = time.monotonic() + timeout
        while len(found := self.mailbox(user)) < count:
            assert time.monotonic() < deadline, "\n".join(self.loop_log)
            await asyncio.sleep(0.05)
        return found

    async def wait_log(self, text: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.loop_log):
            assert time.monotonic() < deadline, f"no {text!r} in:\n" + "\n".join(self.loop_log)
            await asyncio.sleep(0.05)
        return "\n".join(self.loop_log)

    async def wait_empty(self, timeout: float = 20) -> None:
        """The queue once every envelope is gone (a Maildir file is written
        just before its envelope is removed)."""
        deadline = time.monotonic() + timeout
        while self.queued():
            assert time.monotonic() < deadline, "\n".join(self.loop_log)
            await asyncio.sleep(0.05)

    def queued(self) -> list[Envelope]:
        out = []
        for path in (self.spool / "queue").rglob("*"):
            if path.is_file() and path.name != "message" and not path.name.endswith(".tmp"):
                out.append(Envelope.from_bytes(path.read_bytes()))
        return out


CONFIG = """\
mta nameserver 127.0.0.1 port {dns}
table users {{ alice = "65534:65534:{mail}/alice" }}
listen on 127.0.0.1 port {port}
action "local" maildir "{mail}/%{{user.username}}/Maildir" userbase <users>
action "out" relay{relay_options}
match from any for domain example.test action "local"
match from local for any action "out"
"""


@pytest.fixture
def dns(tmp_path):
    servers = DnsServers(tmp_path / "dns")
    yield servers.start
    servers.stop_all()


@pytest.fixture
async def world(tmp_path, caplog) -> AsyncIterator:
    import logging
    started: list[Daemon] = []

    async def start(dns_port: int, relay_options: str = "") -> World:
        mail = tmp_path / "mail"
        (mail / "alice").mkdir(parents=True, exist_ok=True)
        os.chown(mail / "alice", 65534, 65534)         # the user's own home
        port = free_port()
        text = CONFIG.format(dns=dns_port, mail=mail, port=port, relay_options=relay_options)
        (tmp_path / "smtpd.conf").write_text(text)
        config = parse(text, str(tmp_path / "smtpd.conf"))
        daemon = Daemon(config, tmp_path / "spool")
        await daemon.start()
        started.append(daemon)
        lines: list[str] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                lines.append(record.getMessage())

        handler = Keep(logging.INFO)
        logging.getLogger("postillion").addHandler(handler)
        logging.getLogger("postillion").setLevel(logging.INFO)
        return World(daemon, port, mail, tmp_path / "spool", lines)

    yield start
    for daemon in started:
        await daemon.stop()


def receiver(conns: list[Conn], **replies) -> object:
    async def handler(conn: Conn) -> None:
        await dialogue(conn, **replies)
    return handler


async def test_mx_by_preference_and_a_dead_host_skipped(dns, world):
    base = net()
    zones = (Zones().mx("remote.test", 10, "mx1.remote.test").mx("remote.test", 20, "mx2.remote.test")
             .host("mx1.remote.test", f"{base}.2").host("mx2.remote.test", f"{base}.3")
             .mx("dead.test", 10, "mx1.dead.test").mx("dead.test", 20, "mx2.dead.test")
             .host("mx1.dead.test", f"{base}.4").host("mx2.dead.test", f"{base}.3"))
    server = dns(zones)
    w = await world(server.port)
    async with Peer(receiver([]), host=f"{base}.2", port=25) as mx1, \
            Peer(receiver([]), host=f"{base}.3", port=25) as mx2:
        await w.send(["bob@remote.test"])
        await w.wait_log("result=Ok")
        assert len(mx1.conns) == 1 and not mx2.conns     # the best MX
        assert b"Subject: hello" in mx1.conns[0].messages[0]
        # dead.test's best MX (.4) refuses connections: its second (.3) gets it.
        await w.send(["carol@dead.test"])
        deadline = time.monotonic() + 20
        while not mx2.conns or not mx2.conns[0].messages:
            assert time.monotonic() < deadline, "\n".join(w.loop_log)
            await asyncio.sleep(0.05)
    log = await w.wait_log("to=<carol@dead.test>")
    assert f'relay="{base}.3 (mx2.dead.test)"' in log
    assert "mta error" in log                          # the dead route, logged
    await w.wait_empty()


async def test_a_5xx_at_rcpt_bounces_to_the_local_sender(dns, world):
    base = net()
    server = dns(Zones().mx("remote.test", 10, "mx.remote.test").host("mx.remote.test", f"{base}.2"))
    w = await world(server.port)

    def rcpt(address: str) -> str:
        return "550 5.1.1 No such user here\r\n" if address.startswith("nobody") else "250 2.1.5 Ok\r\n"

    async with Peer(receiver([], rcpt=rcpt), host=f"{base}.2", port=25) as mx:
        await w.send(["nobody@remote.test", "bob@remote.test"])
        [dsn_path] = await w.wait_mailbox("alice")
    assert len(mx.conns[0].messages) == 1                        # bob's copy went
    dsn = email.message_from_bytes(dsn_path.read_bytes(), policy=email.policy.default)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    assert dsn["Subject"] == "Delivery status notification: failed"
    assert dsn["From"].addresses[0].username == "MAILER-DAEMON"
    text, status, original = dsn.get_payload()
    report = status.as_string()
    assert "Final-Recipient: rfc822;nobody@remote.test" in report.replace("rfc822; ", "rfc822;")
    assert "Action: failed" in report and "Status: 5.1.1" in report
    assert "No such user here" in report
    assert "bob@remote.test" not in report
    await w.wait_empty()


@pytest.mark.parametrize("domain, outcome", [
    ("nullmx.test", "PermFail"), ("nx.test", "PermFail"), ("broken.test", "TempFail")])
async def test_dns_answers_decide_permanent_or_temporary(dns, world, domain, outcome):
    server = dns(Zones().null_mx("nullmx.test").servfail("broken.test").txt("other.test"))
    w = await world(server.port)
    await w.send([f"someone@{domain}"])
    if outcome == "PermFail":
        [dsn_path] = await w.wait_mailbox("alice")
        dsn = email.message_from_bytes(dsn_path.read_bytes(), policy=email.policy.default)
        assert f"someone@{domain}" in dsn.get_payload()[1].as_string()
        await w.wait_empty()
    else:
        log = await w.wait_log("result=TempFail")     # the attempt is over: a retry waits
        assert "Temporary failure in MX lookup" in log
        deadline = time.monotonic() + 20
        while not (queued := w.queued()) or queued[0].retry < 1:
            assert time.monotonic() < deadline, "\n".join(w.loop_log)
            await asyncio.sleep(0.05)
        [envelope] = queued
        assert envelope.esc_class == 4 and envelope.esc_code == "4.4.3"
        assert w.mailbox("alice") == []


async def test_null_sender_and_notify_never_get_no_bounce(dns, world):
    base = net()
    server = dns(Zones().mx("remote.test", 10, "mx.remote.test").host("mx.remote.test", f"{base}.2"))
    w = await world(server.port)

    async def refuse(conn: Conn) -> None:
        await dialogue(conn, rcpt=lambda a: "550 5.1.1 No such user\r\n", keywords=("PIPELINING", "DSN"))

    async with Peer(refuse, host=f"{base}.2", port=25):
        await w.send(["x@remote.test"], rcpt_options=("NOTIFY=NEVER",))
        await w.send(["y@remote.test"], sender="")
        await w.wait_log("to=<y@remote.test>")
        await w.wait_log("to=<x@remote.test>")
        await w.wait_log("reason=notify-never")
        await w.wait_log("reason=null-sender")
    await asyncio.sleep(1.5)                       # past the bounce grouping delay
    assert w.mailbox("alice") == []
    await w.wait_empty()
