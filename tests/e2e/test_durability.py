"""Once 250 is sent the message survives SIGKILL; before it, nothing survives."""

from __future__ import annotations

import os
import smtplib
import socket
import time


def test_sigkill_after_250_then_restart_delivers(daemon):
    # -P mda: accept and queue, deliver nothing, so the kill certainly finds
    # the message in the queue only (as OpenSMTPD's smtpd -P mda).
    daemon.start("-P", "mda")
    with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as client:
        client.sendmail("bob@example.test", ["alice@example.test", "bob@example.test"],
                        b"Subject: durable\r\n\r\nsurvives a kill\r\n")
        daemon.kill()  # SIGKILL right after the 250, mid-session
    assert daemon.delivered("alice") == []
    queued = daemon.queued_files()
    assert any(p.name == "message" for p in queued), queued
    daemon.start()
    for user in ("alice", "bob"):
        [path] = daemon.wait_delivered(user)
        assert path.read_bytes().endswith(b"\nsurvives a kill\n")


def test_sigkill_mid_data_leaves_nothing(daemon):
    daemon.start()
    with socket.create_connection((daemon.host, daemon.port), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"HELO client.example.net\r\nMAIL FROM:<bob@example.test>\r\n"
                  b"RCPT TO:<alice@example.test>\r\nDATA\r\n")
        for _ in range(4):
            f.readline()
        s.sendall(b"Subject: torn\r\n\r\n" + (b"x" * 998 + b"\r\n") * 100)
        # Wait until the content has reached the queue's incoming area.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
                "incoming" in p.parts for p in daemon.queued_files()):
            time.sleep(0.02)
        assert any("incoming" in p.parts for p in daemon.queued_files())
        daemon.kill()
    daemon.start()
    time.sleep(1.0)  # give a wrongly recovered message time to be delivered
    daemon.stop()
    assert daemon.delivered("alice") == []
    assert daemon.queued_files() == []


def test_a_delivery_repeated_after_a_crash_leaves_one_copy(daemon):
    """The daemon dies after a Maildir rename but before its envelope is
    removed: at restart the envelope is delivered again, into the same
    file name, so the mailbox holds the message once."""
    daemon.start("-P", "mda")
    with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as client:
        client.sendmail("bob@example.test", ["alice@example.test"], b"Subject: once\r\n\r\nonce\r\n")
    daemon.stop()
    # The queue as it was before the delivery: what a crash right after the
    # rename leaves behind (message and envelope still queued).
    saved = {p.relative_to(daemon.spool): p.read_bytes() for p in daemon.queued_files()}
    modes = {p.relative_to(daemon.spool): (p.stat().st_uid, p.stat().st_gid)
             for p in daemon.spool.rglob("*")}
    daemon.start()
    [first] = daemon.wait_delivered("alice")
    daemon.wait_log("result=Ok")
    daemon.stop()
    assert not any(p.name == "message" for p in daemon.queued_files())
    for rel, data in saved.items():             # the crash: the envelope is back
        path = daemon.spool / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for rel, (uid, gid) in modes.items():
        if (daemon.spool / rel).exists():
            os.chown(daemon.spool / rel, uid, gid)
    daemon.start()
    deadline = time.monotonic() + 20
    while daemon.log().count("result=Ok") < 2:
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)
    assert daemon.delivered("alice") == [first]
    assert first.read_bytes().endswith(b"\nonce\n")
