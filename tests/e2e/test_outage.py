"""A table backend that breaks is a temporary failure, never a crash; it recovers."""

from __future__ import annotations

import smtplib


def rcpt(daemon, address):
    with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as client:
        client.ehlo("client.example.net")
        client.mail("bob@example.net")
        return client.docmd(f"RCPT TO:<{address}>")


def test_sqlite_outage_is_451_and_recovers(running):
    db = running.root / "tables.sqlite"
    saved = db.read_bytes()
    assert rcpt(running, "alice@example.test")[0] == 250
    # Truncate in place: the daemon's open connection now sees an empty
    # database with none of the queried tables.
    with open(db, "r+b") as f:
        f.truncate(0)
    code, text = rcpt(running, "alice@example.test")
    assert (code, text[:5]) == (451, b"4.3.0"), text
    assert running.proc.poll() is None
    with open(db, "r+b") as f:
        f.write(saved)
    assert rcpt(running, "alice@example.test")[0] == 250
    log = running.log()
    assert "Traceback" not in log
