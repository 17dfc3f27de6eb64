"""The world the relay tests run in: a sending daemon in the test's event
loop, a real DNS server on loopback (dnsmasq, tests/dnsserver.py) and
receiving servers on port 25 of their own loopback addresses
(tests/mta/peers.py).

The daemon runs in the test's event loop (one process: the agents are the
same as in the mta process), so the peers' view and the daemon's can be
compared directly.  Each test draws its own 127.X.Y.0/24 (`net()`) so that
runs on one machine do not meet on port 25.  Used by test_relay.py and
test_relay_smarthost.py; the fixtures are imported by name into each.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import smtplib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from postillion.config import parse
from postillion.daemon import Daemon
from postillion.queue.envelope import Envelope
from tests.dnsserver import DnsServers
from tests.e2e.conftest import free_port
from tests.mta.peers import Conn, dialogue

SENDER = "alice@example.test"
#: How long a wait for the daemon may take before the test fails with its log.
WAIT: float = 20.0


def net() -> str:
    """A /24 of our own on loopback for one test's MX hosts."""
    return f"127.{random.randrange(1, 255)}.{random.randrange(1, 255)}"


async def until(check: Callable[[], object], what: str, lines: list[str],
                timeout: float = WAIT) -> object:
    """Poll `check()` until it is true (returned); fail with the log if it never is."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what}:\n" + "\n".join(lines)
        await asyncio.sleep(0.05)
    return found


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

    async def wait_mailbox(self, user: str, count: int = 1, timeout: float = WAIT) -> list[Path]:
        await until(lambda: len(self.mailbox(user)) >= count, f"{user}: fewer than {count}",
                    self.loop_log, timeout)
        return self.mailbox(user)

    def log(self) -> str:
        return "\n".join(self.loop_log)

    def lines(self, *texts: str) -> list[str]:
        """The log lines holding every one of `texts`."""
        return [line for line in self.loop_log if all(t in line for t in texts)]

    async def wait_log(self, *texts: str, timeout: float = WAIT, count: int = 1) -> str:
        """The whole log once `count` lines hold every one of `texts`."""
        await until(lambda: len(self.lines(*texts)) >= count, f"no {count} x {texts!r} in",
                    self.loop_log, timeout)
        return self.log()

    async def wait_empty(self, timeout: float = WAIT) -> None:
        """Once every envelope is gone: a Maildir file (a bounce's, say) is
        written just before its envelope is removed."""
        await until(lambda: self.queued() == [], "still queued", self.loop_log, timeout)

    def queued(self) -> list[Envelope]:
        """The envelopes on disk now.  The queue removes files while we look:
        os.walk skips a directory that vanished, and so does the read."""
        out = []
        for top, _dirs, files in os.walk(self.spool / "queue"):
            for name in files:
                if name == "message" or name.endswith(".tmp"):
                    continue
                try:
                    out.append(Envelope.from_bytes((Path(top) / name).read_bytes()))
                except FileNotFoundError:
                    continue
        return out

    async def wait_retry(self, count: int = 1, timeout: float = WAIT) -> list[Envelope]:
        """The queued envelopes once `count` of them have failed an attempt
        and the scheduler is done with them: their retry state is on disk
        and the next attempt scheduled (the scheduler writes the file,
        then lets go of the attempt: in between it is still in flight)."""
        scheduler = self.daemon.scheduler
        assert scheduler is not None

        def failed() -> list[Envelope]:
            found = [e for e in self.queued() if e.retry >= 1]
            return found if len(found) >= count and not scheduler.inflight else []
        await until(failed, f"fewer than {count} envelopes retried", self.loop_log, timeout)
        return self.queued()

    def retry_now(self) -> None:
        """Make every queued envelope due now, skipping the 400 s backoff
        (as `ctl schedule all` would; its retry count starts again).  Call
        after `wait_retry`: an envelope in flight is not rescheduled."""
        scheduler = self.daemon.scheduler
        assert scheduler is not None and not scheduler.inflight
        for envelope in self.queued():
            scheduler.schedule(envelope.replace(retry=0))


CONFIG = """\
mta nameserver 127.0.0.1 port {dns}
table users {{ alice = "65534:65534:{mail}/alice" }}
{extra}
listen on 127.0.0.1 port {port}
action "local" maildir "{mail}/%{{user.username}}/Maildir" userbase <users>
action "out" relay{relay_options}
match from any for domain {local_domain} action "local"
match from local for any action "out"
"""


@pytest.fixture
def dns(tmp_path):
    servers = DnsServers(tmp_path / "dns")
    yield servers.start
    servers.stop_all()


@pytest.fixture
async def world(tmp_path) -> AsyncIterator:
    """start(dns_port, relay_options="", *, extra="", local_domain=...) -> World.

    `relay_options` follow `action "out" relay`; `extra` are lines before the
    listener (tables, `ca`, `mta limit`, `queue ttl`); mail for
    `local_domain` is delivered to alice's Maildir, the rest relayed.
    """
    started: list[Daemon] = []
    handlers: list[logging.Handler] = []

    async def start(dns_port: int, relay_options: str = "", *, extra: str = "",
                    local_domain: str = "example.test") -> World:
        mail = tmp_path / "mail"
        (mail / "alice").mkdir(parents=True, exist_ok=True)
        os.chown(mail / "alice", 65534, 65534)         # the user's own home
        port = free_port()
        text = CONFIG.format(dns=dns_port, mail=mail, port=port, relay_options=relay_options,
                             extra=extra, local_domain=local_domain)
        (tmp_path / "smtpd.conf").write_text(text)
        config = parse(text, str(tmp_path / "smtpd.conf"))
        lines: list[str] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                lines.append(record.getMessage())

        handler = Keep(logging.INFO)
        logging.getLogger("postillion").addHandler(handler)
        logging.getLogger("postillion").setLevel(logging.INFO)
        handlers.append(handler)
        daemon = Daemon(config, tmp_path / "spool")
        await daemon.start()
        started.append(daemon)
        return World(daemon, port, mail, tmp_path / "spool", lines)

    yield start
    for daemon in started:
        await daemon.stop()
    for handler in handlers:
        logging.getLogger("postillion").removeHandler(handler)


def receiver(conns: list[Conn], **replies) -> object:
    async def handler(conn: Conn) -> None:
        await dialogue(conn, **replies)
    return handler
