"""SIGHUP reloads the configuration without a restart
(docs/configuration.md, Reloading): a good one is applied -- new sessions
see the new rules and tables, sessions already open finish under the old,
an unchanged listener keeps its socket -- and a broken one is refused with
one line naming file:line, the old configuration running on untouched."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import sqlite3
import threading
import time

from tests.e2e import procs
from tests.e2e.conftest import DOMAIN, HOSTNAME, delivery_ids, free_port


def reload(daemon, expect: str, count: int = 1, timeout: float = 60.0) -> str:
    """SIGHUP, then the log once it holds `expect` `count` times."""
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while (log := daemon.log()).count(expect) < count:
        assert time.monotonic() < deadline, f"no {expect!r} x{count} in the log:\n{log}"
        time.sleep(0.05)
    return log


def banner(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=10) as c:
        greeting = c.recv(512)
        c.sendall(b"QUIT\r\n")
        return greeting


class Knocker:
    """Connects again and again during a reload: every one must be greeted
    (no refused connection, no port gap)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.greeted = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> Knocker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.failures) < 20:
            try:
                greeting = banner(self.host, self.port)
                if greeting.startswith(b"220"):
                    self.greeted += 1
                else:
                    self.failures.append(repr(greeting))
            except OSError as e:
                self.failures.append(repr(e))
            time.sleep(0.01)


def add_user(daemon, user: str, address: str | None = None) -> None:
    uid, gid = delivery_ids()
    home = daemon.mail / user
    home.mkdir(mode=0o700, exist_ok=True)
    os.chown(home, uid, gid)
    db = sqlite3.connect(daemon.root / "tables.sqlite")
    db.execute("INSERT INTO users VALUES (?, ?, ?, ?)", (user, uid, gid, str(home)))
    if address is not None:
        db.execute("INSERT INTO virtuals VALUES (?, ?)", (address, user))
    db.commit()
    db.close()


def test_new_sessions_see_new_rules_and_tables_open_ones_finish_as_they_began(daemon):
    base = daemon.config.read_text()
    add_user(daemon, "alice", "alice@old.test")       # old.test: a rule the reload removes
    add_user(daemon, "carol")
    daemon.config.write_text(base + 'match from any for domain "old.test" action "local_mail"\n')
    daemon.start()
    before = procs.roles(daemon.proc.pid, "smtp")
    # A session open across the reload: EHLO and MAIL before it.
    old = smtplib.SMTP(daemon.host, daemon.port, timeout=30)
    old.ehlo("old.example.net")
    assert old.mail("bob@example.test")[0] == 250
    # The new configuration: a new table (only a reload opens it), a new
    # action and rule for other.test, and the old.test rule gone.
    others = daemon.root / "others"
    others.write_text("carol@other.test carol\n")
    daemon.config.write_text(
        base + f"table others file:{others}\n"
        'action "other_mail" maildir virtual <others> userbase <users>\n'
        'match from any for domain "other.test" action "other_mail"\n')
    reload(daemon, f"reload: configuration {daemon.config} applied")
    assert set(procs.roles(daemon.proc.pid, "smtp")) - set(before), "a new generation"
    # The old session: its RCPTs answered by the old rules, its message
    # accepted and delivered.
    assert old.rcpt("carol@other.test")[0] == 550
    assert old.rcpt("alice@old.test")[0] == 250
    assert old.data(b"Subject: begun before\r\n\r\nold rules\r\n")[0] == 250
    old.quit()
    # A new session: the new rules and the new table.
    with smtplib.SMTP(daemon.host, daemon.port, timeout=30) as new:
        new.ehlo("new.example.net")
        assert new.mail("bob@example.test")[0] == 250
        assert new.rcpt("alice@old.test")[0] == 550
        assert new.rcpt("carol@other.test")[0] == 250
        assert new.data(b"Subject: begun after\r\n\r\nnew rules\r\n")[0] == 250
    [first] = daemon.wait_delivered("alice")
    assert b"old rules" in first.read_bytes()
    [second] = daemon.wait_delivered("carol")
    assert b"new rules" in second.read_bytes()
    # The replaced smtp processes finished their sessions and exited.
    assert procs.wait_gone(before, 15) == [], daemon.log()
    assert "drained and exited" in daemon.log()


def test_a_broken_configuration_is_refused_and_the_old_one_runs_on(daemon, tmp_path):
    good = daemon.config.read_text()
    daemon.start()
    parent = daemon.proc.pid
    roles = sorted(procs.children(parent))
    inodes = procs.listening(daemon.port)
    assert len(inodes) == 1
    taken = socket.socket()
    taken.bind(("127.0.0.1", free_port()))
    taken.listen(1)
    bad_cert = daemon.root / "bad.crt"
    bad_cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n"
                        "-----END CERTIFICATE-----\n")
    lines = len(good.splitlines())
    broken = [
        # A syntax error: file:line:column.
        (good + "match from any for\n", f"reload: refused: {daemon.config}:{lines + 1}:"),
        # An unknown table.
        (good + 'match from any for domain <nowhere> action "local_mail"\n',
         f"reload: refused: {daemon.config}:{lines + 1}:"),
        # A certificate that does not load.
        (good + f"pki mx.example.test cert {bad_cert}\npki mx.example.test key {bad_cert}\n"
         f"listen on 127.0.0.1 port {free_port()} tls pki mx.example.test\n",
         f"reload: refused: {daemon.config}:{lines + 3}:"),
        # A port it cannot bind.
        (good + f"listen on 127.0.0.1 port {taken.getsockname()[1]}\n",
         f"reload: refused: {daemon.config}:{lines + 1}:1: cannot listen on 127.0.0.1 port "
         f"{taken.getsockname()[1]}: Address already in use"),
    ]
    try:
        with Knocker(daemon.host, daemon.port) as knocker:
            for count, (text, expect) in enumerate(broken, 1):
                daemon.config.write_text(text)
                log = reload(daemon, "reload: refused: ", count)
                assert expect in log, log
                assert sorted(procs.children(parent)) == roles     # nothing restarted
                assert procs.listening(daemon.port) == inodes     # the same socket
        assert knocker.greeted > 0 and not knocker.failures, knocker.failures
    finally:
        taken.close()
    refusals = [line for line in daemon.log().splitlines() if "reload: refused" in line]
    assert len(refusals) == len(broken)
    assert "applied" not in daemon.log()
    # Still accepting and delivering, with the old configuration.
    with smtplib.SMTP(daemon.host, daemon.port, timeout=30) as client:
        client.sendmail("bob@example.test", [f"alice@{DOMAIN}"], b"Subject: x\r\n\r\nstill\r\n")
    daemon.wait_delivered("alice")


def test_an_unchanged_listener_keeps_its_socket_across_a_reload(daemon):
    base = daemon.config.read_text()
    gone, new = free_port(), free_port()
    daemon.config.write_text(base + f"listen on 127.0.0.1 port {gone}\n")
    daemon.start()
    kept = procs.listening(daemon.port)
    assert len(kept) == 1 and procs.listening(gone)
    [queue] = procs.roles(daemon.proc.pid, "queue")
    assert procs.roles(daemon.proc.pid, "mta") == []
    # The new listener first: the kept one changes its index, not its socket.
    # An action that relays: an mta process starts with the new queue process.
    lines = base.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("listen on"))
    lines.insert(at, f"listen on 127.0.0.1 port {new}")
    daemon.config.write_text("\n".join(lines) + '\naction "out" relay\n')
    with Knocker(daemon.host, daemon.port) as knocker:
        time.sleep(0.2)
        reload(daemon, f"reload: configuration {daemon.config} applied")
        time.sleep(0.2)
    assert knocker.greeted > 0 and not knocker.failures, knocker.failures
    assert procs.listening(daemon.port) == kept
    assert procs.listening(gone) == set()
    assert banner("127.0.0.1", new).startswith(b"220")
    assert procs.roles(daemon.proc.pid, "queue") != [queue]
    assert len(procs.roles(daemon.proc.pid, "mta")) == 1
    # Both listeners serve the new generation's sessions.
    for port in (daemon.port, new):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("bob@example.test", [f"alice@{DOMAIN}"],
                            f"Subject: {port}\r\n\r\nbody\r\n".encode())
    assert len(daemon.wait_delivered("alice", 2)) == 2


def test_ctl_reload_answers_with_the_outcome(daemon):
    """`postillion ctl reload` is SIGHUP with an answer: the refusal's
    file:line on stderr (exit 1), or exit 0 once the new processes are up
    (the queue process that carried the request is replaced after)."""
    import subprocess
    import sys
    good = daemon.config.read_text()
    daemon.start()

    def ctl(*words: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "postillion.cli", "ctl", "-s", str(daemon.spool),
                               *words], capture_output=True, text=True, timeout=90)
    daemon.config.write_text(good + "match from any for\n")
    done = ctl("reload")
    assert done.returncode == 1, done
    assert f"{daemon.config}:{len(good.splitlines()) + 1}:" in done.stderr
    daemon.config.write_text(good)
    done = ctl("rel")                       # a unique prefix
    assert done.returncode == 0, done
    assert "reload: configuration" in daemon.wait_log("applied")
    with smtplib.SMTP(daemon.host, daemon.port, timeout=30) as client:
        client.sendmail("bob@example.test", [f"alice@{DOMAIN}"], b"Subject: x\r\n\r\nafter\r\n")
    daemon.wait_delivered("alice")


def test_a_renewed_certificate_is_served_after_a_reload(daemon):
    """What certbot's deploy hook does: new files under the same `pki`
    paths, then `systemctl reload`.  The listener keeps its socket; new
    sessions get the new certificate."""
    import ssl

    import trustme
    ca = trustme.CA()
    cert, key = daemon.root / "mx.crt", daemon.root / "mx.key"

    def issue() -> None:
        leaf = ca.issue_cert(HOSTNAME, "127.0.0.1")
        leaf.private_key_pem.write_to_path(str(key))
        leaf.cert_chain_pems[0].write_to_path(str(cert))
    issue()
    port = free_port()
    daemon.config.write_text(daemon.config.read_text() + (
        f"pki {HOSTNAME} cert {cert}\npki {HOSTNAME} key {key}\n"
        f"listen on 127.0.0.1 port {port} tls pki {HOSTNAME} hostname {HOSTNAME}\n"))
    daemon.start()
    client = ssl.create_default_context()
    ca.configure_trust(client)

    def served() -> bytes:
        with smtplib.SMTP(daemon.host, port, timeout=10) as c:
            c.starttls(context=client)
            der = c.sock.getpeercert(binary_form=True)
            assert der is not None
            return der
    first = served()
    inodes = procs.listening(port)
    issue()
    log = reload(daemon, "applied")
    assert "refused" not in log
    second = served()
    assert second != first
    assert procs.listening(port) == inodes
