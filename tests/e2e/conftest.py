"""End-to-end fixtures: the real daemon, as a subprocess, on a loopback port.

Each test gets its own config, spool and mail root, and a `postillion run`
process it can stop gracefully, kill with SIGKILL and restart.  Deliveries
never run as root: under root the virtual users get uid/gid 65534 and the
mail root is made traversable for them.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from postillion.paths import CONTROL_SOCKET
from postillion.queue.lock import PID_FILE

DOMAIN = "example.test"
HOSTNAME = "mx.example.test"


def _ephemeral_range() -> range:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = map(int, f.read().split())
        return range(low, high + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


#: Every port free_port has handed out in this test run: two draws for one
#: daemon's listeners (or for two daemons) must never pick the same port,
#: which random draws do now and then over a few thousand calls.
_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now, outside the kernel's ephemeral range, and
    not handed out before in this run.

    A port from bind(0) is ephemeral: between the probe and the daemon's
    bind, any test's outgoing connection may take it ("address already in
    use").  Ports below the ephemeral range are only ever taken by listeners.
    """
    ephemeral = _ephemeral_range()
    for _ in range(500):
        port = random.randrange(10000, 65536)
        if port in ephemeral or port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    raise AssertionError("no free port outside the ephemeral range")


def delivery_ids() -> tuple[int, int]:
    return (65534, 65534) if os.geteuid() == 0 else (os.getuid(), os.getgid())


@dataclass
class Daemon:
    """A `postillion run` subprocess and the files around it."""

    root: Path
    mail: Path
    config: Path
    spool: Path
    host: str
    port: int
    proc: subprocess.Popen | None = None
    logs: list[str] = field(default_factory=list)
    log_path: Path | None = None

    def start(self, *extra: str, wait: bool = True) -> None:
        self.log_path = self.root / f"daemon-{len(self.logs)}.log"
        out = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "postillion.cli", "run", "-d", "-f", str(self.config),
             "-s", str(self.spool), *extra],
            stdout=out, stderr=subprocess.STDOUT)
        out.close()
        if wait:
            self.wait_listening()

    def wait_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            try:
                # The parent binds before its smtp processes are up: ready is
                # when one of them greets, not when the port accepts.
                with socket.create_connection((self.host, self.port), timeout=5) as probe:
                    if probe.recv(4).startswith(b"220") and "postillion ready" in self.log():
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"daemon not listening after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        current = self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""
        return "".join(self.logs) + current

    def _retire_log(self) -> None:
        if self.log_path is not None and self.log_path.exists():
            self.logs.append(self.log_path.read_text(errors="replace"))
            self.log_path = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
        self._retire_log()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None
        self._retire_log()

    def maildir(self, user: str) -> Path:
        return self.mail / user / "Maildir"

    def delivered(self, user: str) -> list[Path]:
        new = self.maildir(user) / "new"
        return sorted(new.iterdir()) if new.exists() else []

    def wait_delivered(self, user: str, count: int = 1, timeout: float = 20.0) -> list[Path]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            files = self.delivered(user)
            if len(files) >= count:
                return files
            time.sleep(0.05)
        raise AssertionError(f"{user}: {len(self.delivered(user))} of {count} delivered\n{self.log()}")

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        """The log once it holds `text`: the line of an event is written just
        after the event, so a file on disk may come before its log line."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()):
            assert time.monotonic() < deadline, f"no {text!r} in the log:\n{log}"
            time.sleep(0.02)
        return log

    def queued_files(self) -> list[Path]:
        """Every file in the queue (committed or not), for 'nothing queued' checks;
        the spool's lock file and control socket are no mail."""
        return sorted(p for p in files_under(self.spool)
                      if p.parent != self.spool or p.name not in (PID_FILE, CONTROL_SOCKET))


def files_under(root: Path) -> list[Path]:
    """Every file under root now.  A running queue removes directories while
    we look: os.walk skips one that vanished (rglob raises)."""
    return [Path(top) / name for top, _dirs, files in os.walk(root) for name in files]


CONFIG = """\
table domains sqlite:{backend}
table virtuals sqlite:{backend}
table users sqlite:{backend}
listen on {host} port {port} hostname {hostname}
action "local_mail" maildir virtual <virtuals> userbase <users>
match from any for domain <domains> action "local_mail"
"""

BACKEND = """\
dbpath tables.sqlite
query_domain SELECT name FROM domains WHERE name = ?
query_alias SELECT target FROM virtuals WHERE address = ?
query_userinfo SELECT uid, gid, home FROM users WHERE name = ?
"""


def write_tables(db_path: Path, mail: Path, users: tuple[str, ...]) -> None:
    uid, gid = delivery_ids()
    db = sqlite3.connect(db_path)
    db.executescript("""
        CREATE TABLE domains (name TEXT);
        CREATE TABLE virtuals (address TEXT, target TEXT);
        CREATE TABLE users (name TEXT, uid INTEGER, gid INTEGER, home TEXT);
    """)
    db.execute("INSERT INTO domains VALUES (?)", (DOMAIN,))
    for user in users:
        db.execute("INSERT INTO virtuals VALUES (?, ?)", (f"{user}@{DOMAIN}", user))
        db.execute("INSERT INTO users VALUES (?, ?, ?, ?)", (user, uid, gid, str(mail / user)))
    db.execute("INSERT INTO virtuals VALUES (?, ?)", (f"postmaster@{DOMAIN}", "alice"))
    db.commit()
    db.close()


@contextlib.contextmanager
def virtual_world(prefix: str = "postillion-e2e-", config: str = CONFIG, extra: str = "",
                  **fields: object) -> Iterator[Daemon]:
    """A configured (not yet started) daemon on 127.0.0.1 with the virtual
    users alice and bob in SQLite; `config` is formatted with backend, host,
    port, hostname and `fields`, then `extra` appended.  Stopped and removed
    at the end."""
    # Not under pytest's tmp_path: that is 0700 root's when tests run as root,
    # and deliveries run as the (unprivileged) virtual user.
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(root, 0o755)
    mail = root / "mail"
    mail.mkdir(mode=0o755)
    uid, gid = delivery_ids()
    for user in ("alice", "bob"):
        (mail / user).mkdir(mode=0o700)
        os.chown(mail / user, uid, gid)
    write_tables(root / "tables.sqlite", mail, ("alice", "bob"))
    (root / "sqlite.conf").write_text(BACKEND)
    host, port = "127.0.0.1", free_port()
    path = root / "postillion.conf"
    path.write_text(config.format(backend=root / "sqlite.conf", host=host, port=port,
                                  hostname=HOSTNAME, **fields) + extra)
    d = Daemon(root=root, mail=mail, config=path, spool=root / "spool", host=host, port=port)
    try:
        yield d
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def daemon():
    """A configured (not yet started) daemon on 127.0.0.1 with alice and bob."""
    with virtual_world() as d:
        yield d


@pytest.fixture
def running(daemon):
    daemon.start()
    return daemon
