"""`postillion ctl`, every verb, against one running daemon (`postillion run`
as a subprocess, with an mta process: `remote.test` is relayed to a port
where nothing listens, so relays fail temporarily and stay queued).

Each verb runs as text and as --json, the JSON checked against
docs/ctl-schema.json.  The tests share the daemon and run in file order;
each leaves the daemon as it found it (nothing paused, nothing queued).
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.e2e import procs
from tests.control.ctlrun import ctl, ok, ok_json, until, validate
from tests.e2e.conftest import Daemon, free_port, virtual_world

CONFIG = """\
mta limit conn-delay-route 0 reconn-delay-route 0 conn-delay-relay 0
table domains sqlite:{backend}
table virtuals sqlite:{backend}
table users sqlite:{backend}
listen on {host} port {port} hostname {hostname}
action "local_mail" maildir virtual <virtuals> userbase <users>
action "out" relay host smtp://127.0.0.1:{dead}
match from any for domain <domains> action "local_mail"
match from any for domain remote.test action "out"
"""


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with virtual_world("postillion-ctl-", CONFIG, dead=free_port()) as d:
        d.start()
        yield d


def send(d: Daemon, rcpt: str, subject: str) -> None:
    with smtplib.SMTP(d.host, d.port, timeout=10) as client:
        client.sendmail("alice@example.test", [rcpt], f"Subject: {subject}\r\n\r\n{subject}\r\n")


def queue(d: Daemon) -> list[dict]:
    return ok_json(d.spool, "show queue")


def banner(d: Daemon) -> bytes:
    with socket.create_connection((d.host, d.port), timeout=10) as s:
        s.settimeout(10)
        return s.recv(200)


def test_verbs_by_unique_prefix_and_the_exit_statuses(daemon):
    assert ok(daemon.spool, "sh", "q") == ""
    assert "queue.size=0" in ok(daemon.spool, "sh", "stats").splitlines()   # the exact word wins
    done = ctl(daemon.spool, "sh", "sta")
    assert done.returncode == 2 and "stats, status" in done.stderr
    done = ctl(daemon.spool, "s")
    assert done.returncode == 2 and "ambiguous" in done.stderr and "schedule" in done.stderr
    done = ctl(daemon.spool, "show", "h")
    assert done.returncode == 2 and "hosts, hoststats" in done.stderr
    done = ctl(daemon.spool, "frobnicate")
    assert done.returncode == 2 and "unknown verb: frobnicate" in done.stderr
    done = ctl(daemon.spool, "show")
    assert done.returncode == 2 and "incomplete verb" in done.stderr
    done = ctl(daemon.spool, "trace", "nothing")
    assert done.returncode == 2 and "one of: smtp" in done.stderr
    done = ctl(daemon.spool, "show", "envelope", "0123456789abcdef")
    assert done.returncode == 1 and "no such envelope" in done.stderr
    done = ctl(daemon.root / "no-spool", "show", "queue")
    assert done.returncode == 3 and "cannot reach the daemon" in done.stderr, done.stderr
    mailq = [sys.executable, "-m", "postillion.cli", "mailq", "-s", str(daemon.spool)]
    done = subprocess.run(mailq, capture_output=True, text=True, timeout=40)
    assert done.returncode == 0 and done.stdout == ""
    done = subprocess.run([*mailq, "--json"], capture_output=True, text=True, timeout=40)
    assert validate("show queue", json.loads(done.stdout)) == []


def test_show_stats_and_status(daemon):
    send(daemon, "bob@example.test", "counted")
    daemon.wait_delivered("bob")
    stats = until(lambda: (s := ok_json(daemon.spool, "show stats"))["scheduler.delivery.ok"] >= 1 and s,
                  "the delivery counted")
    assert stats["smtp.session.inet4"] >= 1 and stats["queue.envelope.enqueued"] >= 1
    assert stats["queue.envelope.dequeued"] >= 1 and stats["queue.size"] == 0
    text = ok(daemon.spool, "show", "stats").splitlines()
    assert "queue.size=0" in text and all("=" in line for line in text)
    status = ok_json(daemon.spool, "show status")
    assert status["paused"] == [] and status["queue"] == 0
    assert status["processes"]["mta"] and len(status["processes"]["smtp"]) >= 1
    assert status["pid"] == daemon.proc.pid
    text = ok(daemon.spool, "show", "status")
    assert f"pid: {daemon.proc.pid}" in text and "paused: \n" in text


def test_pause_smtp_refuses_new_clients_and_lets_open_sessions_go_on(daemon):
    with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as open_session:
        assert ok_json(daemon.spool, "pause smtp")["paused"] is True
        assert banner(daemon).startswith(b"421 4.3.2 ")
        assert "smtp" in ok_json(daemon.spool, "show status")["paused"]
        assert open_session.ehlo()[0] == 250         # an open session goes on
        open_session.sendmail("alice@example.test", ["bob@example.test"], b"Subject: open\r\n\r\nx\r\n")
    assert "paused: yes" in ok(daemon.spool, "pause", "smtp")
    assert ok_json(daemon.spool, "resume smtp")["paused"] is False
    assert banner(daemon).startswith(b"220 ")
    assert "paused: no" in ok(daemon.spool, "resume", "smtp")
    daemon.wait_delivered("bob", 2)


def test_pause_mda_holds_deliveries_and_pause_envelope_holds_one(daemon):
    before = len(daemon.delivered("alice"))
    assert ok_json(daemon.spool, "pause mda") == {"subsystem": "mda", "paused": True, "changed": True}
    assert "subsystem: mda" in ok(daemon.spool, "pause", "mda")
    send(daemon, "alice@example.test", "held by pause mda")
    [env] = until(lambda: queue(daemon), "the message queued")
    evpid = env["evpid"]
    time.sleep(1.0)
    assert len(daemon.delivered("alice")) == before
    # show envelope and show message, text and JSON
    shown = ok_json(daemon.spool, "show envelope", evpid)
    assert shown["id"] == evpid and shown["dest"] == "alice@example.test"
    assert "dest: alice@example.test" in ok(daemon.spool, "show", "envelope", evpid)
    assert "held by pause mda" in ok_json(daemon.spool, "show message", env["msgid"])["data"]
    assert "Subject: held by pause mda" in ok(daemon.spool, "show", "message", evpid)
    line = ok(daemon.spool, "show", "queue").strip()
    assert line.startswith(evpid + "|inet4|mda|") and "|alice@example.test|" in line
    # pause envelope: held (offline) even once mda resumes
    assert ok_json(daemon.spool, "pause envelope", evpid) == {"paused": 1, "evpids": [evpid]}
    assert queue(daemon)[0]["runstate"] == "offline"
    assert ok_json(daemon.spool, "resume mda")["paused"] is False
    time.sleep(1.0)
    assert len(daemon.delivered("alice")) == before
    assert "paused: 1" in ok(daemon.spool, "pause", "envelope", evpid)
    assert ok_json(daemon.spool, "resume envelope", evpid) == {"resumed": 1, "evpids": [evpid]}
    daemon.wait_delivered("alice", before + 1)
    assert "resumed: 0" in ok(daemon.spool, "resume", "envelope", "all")
    assert "paused: no" in ok(daemon.spool, "resume", "mda")
    until(lambda: not queue(daemon), "the queue empty")


def test_pause_mta_holds_relays(daemon):
    assert ok_json(daemon.spool, "pause mta") == {"subsystem": "mta", "paused": True, "changed": True}
    assert ok_json(daemon.spool, "show status")["paused"] == ["mta"]
    send(daemon, "erin@remote.test", "held by pause mta")
    [env] = until(lambda: queue(daemon), "the relay queued")
    time.sleep(1.0)
    [env] = queue(daemon)
    assert env["retries"] == 0 and env["runstate"] == "pending"    # not tried
    assert "changed: no" in ok(daemon.spool, "pause", "mta")
    assert "paused: no" in ok(daemon.spool, "resume", "mta")
    until(lambda: [e for e in queue(daemon) if e["retries"] == 1], "tried once resumed")
    assert ok_json(daemon.spool, "resume mta")["changed"] is False
    assert ok_json(daemon.spool, "remove", "all")["removed"] == 1
    for route in ok_json(daemon.spool, "show routes"):       # as the next test expects them
        ok(daemon.spool, "resume", "route", str(route["id"]))


def test_routes_schedule_and_remove_of_a_deferred_relay(daemon):
    bounces = ok_json(daemon.spool, "show stats").get("queue.bounce", 0)
    alice = len(daemon.delivered("alice"))
    send(daemon, "carol@remote.test", "deferred")
    [env] = until(lambda: [e for e in queue(daemon) if e["retries"] == 1], "the first attempt failed")
    assert env["type"] == "mta" and env["runstate"] == "pending" and env["runstate-secs"] > 60
    evpid = env["evpid"]
    # what the mta process knows
    [route] = ok_json(daemon.spool, "show routes")
    assert "D" in route["flags"] and "N" in route["flags"] and route["penalty"] >= 1
    assert route["host"] == "127.0.0.1" and route["delay"] > 0
    assert ok(daemon.spool, "show", "routes").startswith(f"{route['id']}|")
    [relay] = ok_json(daemon.spool, "show relays")
    assert "127.0.0.1" in relay["relay"]
    assert ok(daemon.spool, "show", "relays").strip()
    [stat] = ok_json(daemon.spool, "show hoststats")
    assert stat["domain"] == "remote.test" and stat["tempfail"] >= 1 and stat["ok"] == 0
    assert ok(daemon.spool, "show", "hoststats").startswith(f"remote.test|0|{stat['tempfail']}|0|")
    hosts = ok_json(daemon.spool, "show hosts")
    assert [h["host"] for h in hosts] in ([], ["127.0.0.1"])
    ok(daemon.spool, "show", "hosts")
    # resume route: enabled again; schedule: tried now, not in 400 s
    assert ok_json(daemon.spool, "resume route", str(route["id"])) == {"route": route["id"], "resumed": True}
    assert "resumed: no" in ok(daemon.spool, "resume", "route", str(route["id"]))
    assert ctl(daemon.spool, "resume", "route", "999").returncode == 1
    assert ok_json(daemon.spool, "schedule", evpid) == {"scheduled": 1, "evpids": [evpid]}
    until(lambda: [e for e in queue(daemon) if e["retries"] == 2], "the scheduled attempt", timeout=30)
    ok_json(daemon.spool, "resume route", str(ok_json(daemon.spool, "show routes")[0]["id"]))
    assert "scheduled: 1" in ok(daemon.spool, "schedule", env["msgid"])
    until(lambda: [e for e in queue(daemon) if e["retries"] == 3], "the second scheduled attempt", timeout=30)
    assert ctl(daemon.spool, "schedule", "ffffffff").returncode == 1
    # remove: gone, and no bounce
    assert ok_json(daemon.spool, "remove", evpid) == {"removed": 1, "inflight": 0, "evpids": [evpid]}
    assert queue(daemon) == []
    daemon.wait_log(f"queue remove evpid={evpid}")
    send(daemon, "dave@remote.test", "removed by msgid")
    [env] = until(lambda: [e for e in queue(daemon) if e["retries"] == 1], "the first attempt failed")
    assert "removed: 1" in ok(daemon.spool, "remove", env["msgid"])
    time.sleep(1.0)
    assert ok_json(daemon.spool, "show stats").get("queue.bounce", 0) == bounces
    assert len(daemon.delivered("alice")) == alice          # no DSN to the sender
    assert "result=Removed" in daemon.log()


def test_update_table_and_the_logging_verbs(daemon):
    updated = ok_json(daemon.spool, "update table", "users")
    assert {"queue", "smtp"} <= set(updated["processes"])
    assert "table: domains" in ok(daemon.spool, "update", "table", "domains")
    done = ctl(daemon.spool, "update", "table", "nosuch")
    assert done.returncode == 1 and "nosuch" in done.stderr
    assert ok_json(daemon.spool, "trace", "control")["traced"] is True
    ok(daemon.spool, "show", "queue")
    daemon.wait_log("control: uid 0")           # the control trace names each request
    assert ok_json(daemon.spool, "untrace", "control")["traced"] is False
    assert "traced: yes" in ok(daemon.spool, "trace", "smtp")
    assert "smtp event MailFrom" not in daemon.log()
    send(daemon, "bob@example.test", "traced")
    daemon.wait_log("smtp event MailFrom")      # from the smtp process that took it
    assert "traced: no" in ok(daemon.spool, "untrace", "smtp")
    verbose = ok_json(daemon.spool, "log verbose")
    assert verbose["level"] == "verbose" and verbose["processes"] >= 4   # parent, queue, smtp, mta
    assert ok_json(daemon.spool, "log brief")["level"] == "brief"
    assert "level: verbose" in ok(daemon.spool, "log", "verbose")
    assert "level: brief" in ok(daemon.spool, "log", "brief")


@pytest.mark.parametrize("as_json", [False, True])
def test_monitor_streams_a_line_per_second(daemon, as_json):
    argv = [sys.executable, "-m", "postillion.cli", "ctl", "-s", str(daemon.spool),
            *(["--json"] if as_json else []), "monitor"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert all(line.endswith("\n") for line in lines), lines
    if as_json:
        for line in lines:
            validate("monitor", json.loads(line))
    else:
        assert lines[0].split()[:4] == ["clients", "new", "closed", "queue"]
        assert all(len(line.split()) == 13 for line in lines)


def test_reload_and_encrypt(daemon):
    assert ok_json(daemon.spool, "reload") == {"reloaded": True}
    assert "reloaded: yes" in ok(daemon.spool, "reload")
    daemon.wait_log("reload requested by postillion ctl")
    assert ok(daemon.spool, "encrypt", "secret").startswith("$")
    assert ok_json(daemon.spool, "encrypt", "secret")["encrypted"].startswith("$")


def test_a_pause_outlives_the_processes_it_was_told_to(daemon):
    """The parent starts a restarted role with what is paused."""
    ok(daemon.spool, "pause", "smtp")
    ok(daemon.spool, "pause", "mda")
    old = procs.roles(daemon.proc.pid, "smtp") + procs.roles(daemon.proc.pid, "queue")
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    until(lambda: len(procs.roles(daemon.proc.pid, "smtp")) == len(old) - 1 and
          not set(procs.roles(daemon.proc.pid, "smtp") + procs.roles(daemon.proc.pid, "queue")) & set(old)
          and "smtp process" in daemon.log(), "the roles restarted", timeout=30)
    status = until(lambda: (s := ctl(daemon.spool, "show", "status", as_json=True)).returncode == 0
                   and validate("show status", json.loads(s.stdout)), "the queue process back", timeout=30)
    assert status["paused"] == ["mda", "smtp"]
    until(lambda: None not in ok_json(daemon.spool, "show status")["processes"]["smtp"],
          "every smtp process started")
    assert banner(daemon).startswith(b"421 4.3.2 ")
    ok(daemon.spool, "resume", "smtp")
    ok(daemon.spool, "resume", "mda")
    assert ok_json(daemon.spool, "show status")["paused"] == []
    assert banner(daemon).startswith(b"220 ")


def test_stop(daemon):
    assert ok_json(daemon.spool, "stop") == {"stopping": True}
    daemon.proc.wait(timeout=20)
    done = ctl(daemon.spool, "show", "queue")
    assert done.returncode == 3
