"""The real daemon in this process, so tests can shorten its limits and
delays while it runs (timeouts, early-talker window, AUTH failure delay) and
run it on uvloop and on plain asyncio: a Config is loaded from the e2e
fixture's file and its listeners replaced by the ListenDecl values built
here.  `test_submission_config.py` runs the same setup from smtpd.conf as a
`postillion run` subprocess.

The daemon runs on its own event loop (uvloop when installed, as `postillion
run` does) in a thread; clients -- smtplib, swaks, aiosmtplib, raw sockets --
talk to it over loopback.  Certificates come from trustme; the credentials
and senders tables live in the fixture's SQLite database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import pytest
import trustme

from postillion.config import load
from postillion.config.model import CaDecl, ListenDecl, PkiDecl, Position, TableDecl
from postillion.daemon import Daemon
from postillion.smtp.tuning import Tuning

from .conftest import HOSTNAME, free_port

USER, PASSWORD = "gilles", "s3cret pass"
NAMED = "names.example.test"
POS = Position("test.conf", 1, 1)
#: Short delays so that tests do not wait out the real ones.
FAST = Tuning(banner_delay=0.0, banner_delay_local=0.0, auth_failure_delay=0.05)

CREDENTIALS_QUERIES = """\
query_credentials SELECT name, secret FROM credentials WHERE name = ?
query_mailaddrmap SELECT pattern FROM senders WHERE name = ?
"""


class LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@dataclass
class InProcess:
    """A running in-process daemon; `ports[name]` for each listener."""

    fixture: object                     # the conftest Daemon (paths, maildir helpers)
    ca: trustme.CA
    ports: dict[str, int] = field(default_factory=dict)
    loop: asyncio.AbstractEventLoop | None = None
    daemon: Daemon | None = None
    thread: threading.Thread | None = None
    capture: LogCapture = field(default_factory=LogCapture)
    host: str = "127.0.0.1"

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def log(self) -> str:
        return "\n".join(self.capture.lines)

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        """The log once it contains `text` (sessions log after the client sees EOF)."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged:\n{self.log()}")
            time.sleep(0.02)
        return self.log()

    def run(self, coro, timeout: float = 20.0):
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def set_tuning(self, tuning: Tuning) -> None:
        assert self.daemon is not None
        for listener in self.daemon.listeners:
            listener.ctx = dataclasses.replace(listener.ctx, tuning=tuning)

    def set_limits(self, **changes) -> None:
        """Change the running listeners' Limits (sessions read them at accept)."""
        assert self.daemon is not None
        for listener in self.daemon.listeners:
            limits = dataclasses.replace(listener.ctx.limits, **changes)
            listener.ctx = dataclasses.replace(listener.ctx, limits=limits)
            listener.gate.limits = limits     # the session limits are the gate's

    def queued(self) -> list:
        return [p for p in self.fixture.queued_files() if "corrupt" not in p.parts]

    def delivered(self, user: str):
        return self.fixture.delivered(user)

    def wait_delivered(self, user: str, count: int = 1):
        return self.fixture.wait_delivered(user, count)


def add_credentials(db_path: Path) -> None:
    db = sqlite3.connect(db_path)
    secret = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    db.executescript("CREATE TABLE credentials (name TEXT, secret TEXT);"
                     "CREATE TABLE senders (name TEXT, pattern TEXT);")
    db.execute("INSERT INTO credentials VALUES (?, ?)", (USER, secret))
    db.execute("INSERT INTO senders VALUES (?, ?)", (USER, f"{USER}@example.test"))
    db.execute("INSERT INTO senders VALUES (?, ?)", (USER, "@example.org"))
    db.commit()
    db.close()


def listeners(ports: dict[str, int], host: str) -> tuple[ListenDecl, ...]:
    """The listener set every TLS/AUTH test shares."""
    common = dict(pos=POS, hostname=HOSTNAME)
    return (
        # port 25: STARTTLS offered, not required; no AUTH
        ListenDecl(host, port=ports["mx"], tls=True, **common),
        # 587: submission, STARTTLS required, AUTH against SQLite, senders
        ListenDecl(host, port=ports["submission"], tls_require=True, auth="required",
                   auth_table="creds", senders="creds", masquerade=True, received_auth=True, **common),
        # 465: SMTPS with AUTH
        ListenDecl(host, port=ports["smtps"], smtps=True, auth="required", auth_table="creds",
                   **common),
        # client certificates required
        ListenDecl(host, port=ports["verify"], tls_require=True, verify=True, ca="clients", **common),
        # plain port 25 with nothing: AUTH and STARTTLS not offered
        ListenDecl(host, port=ports["plain"], **common),
        # the announced name comes from an addrname table by local address
        ListenDecl(host, port=ports["named"], hostnames="names", **common),
    )


def build(fixture, tmp: Path) -> InProcess:
    ca = trustme.CA()
    cert = ca.issue_cert(HOSTNAME, "127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(tmp / "mx.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp / "mx.crt"))
    other = ca.issue_cert("other.example.test")
    other.private_key_pem.write_to_path(str(tmp / "other.key"))
    other.cert_chain_pems[0].write_to_path(str(tmp / "other.crt"))
    ca.cert_pem.write_to_path(str(tmp / "ca.crt"))
    add_credentials(fixture.root / "tables.sqlite")
    backend = fixture.root / "sqlite.conf"
    (fixture.root / "creds.conf").write_text(
        f"dbpath {fixture.root / 'tables.sqlite'}\n" + CREDENTIALS_QUERIES)
    config = load(fixture.config)
    ports = {name: free_port() for name in ("mx", "submission", "smtps", "verify", "plain", "named")}
    tables = dict(config.tables)
    tables["creds"] = TableDecl("creds", "sqlite", str(fixture.root / "creds.conf"), POS)
    tables["names"] = TableDecl("names", "static", None, POS, pairs=((fixture.host, NAMED),),
                                is_map=True)
    assert backend.exists()
    config = dataclasses.replace(
        config, tables=tables, listeners=listeners(ports, fixture.host),
        pkis={HOSTNAME: PkiDecl(HOSTNAME, POS, cert=str(tmp / "mx.crt"), key=str(tmp / "mx.key"))},
        cas={"clients": CaDecl("clients", POS, cert=str(tmp / "ca.crt"))})
    return InProcess(fixture=fixture, ca=ca, ports=ports), config


def start(proc: InProcess, config, use_uvloop: bool = True) -> None:
    ready = threading.Event()
    try:
        import uvloop
        new_loop = uvloop.new_event_loop if use_uvloop else asyncio.new_event_loop
    except ImportError:
        new_loop = asyncio.new_event_loop
    proc.loop = loop = new_loop()
    logger = logging.getLogger("postillion")
    logger.setLevel(logging.INFO)
    logger.addHandler(proc.capture)

    def run() -> None:
        asyncio.set_event_loop(loop)
        ready.set()
        loop.run_forever()

    proc.thread = threading.Thread(target=run, daemon=True)
    proc.thread.start()
    ready.wait()
    proc.daemon = Daemon(config, proc.fixture.spool)
    proc.run(proc.daemon.start())
    proc.set_tuning(FAST)


def stop(proc: InProcess) -> None:
    if proc.daemon is not None and proc.loop is not None:
        try:
            proc.run(proc.daemon.stop(), timeout=30)
        finally:
            proc.loop.call_soon_threadsafe(proc.loop.stop)
            assert proc.thread is not None
            proc.thread.join(10)
            proc.loop.close()
    logging.getLogger("postillion").removeHandler(proc.capture)


@pytest.fixture(params=["uvloop", "asyncio"])
def secure(request, daemon, tmp_path):
    """The daemon with the listeners of `listeners()`, on uvloop and on asyncio."""
    proc, config = build(daemon, tmp_path)
    start(proc, config, use_uvloop=request.param == "uvloop")
    try:
        yield proc
    finally:
        stop(proc)


@pytest.fixture
def secure_uvloop(daemon, tmp_path):
    """As `secure`, uvloop only (as `postillion run`), for the slower tests."""
    proc, config = build(daemon, tmp_path)
    start(proc, config)
    try:
        yield proc
    finally:
        stop(proc)
