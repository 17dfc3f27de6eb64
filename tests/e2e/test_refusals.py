"""Unknown users, foreign domains and relay tricks are refused; nothing is queued."""

from __future__ import annotations

import smtplib

import pytest

REFUSED = [
    ("nobody@example.test", 550, b"5.1.1"),              # unknown user
    ("user@example.net", 550, b"5.7.1"),                 # a domain we do not serve
    ("user%example.net@example.test", 550, b"5.1.1"),    # percent hack: a local name, unknown
    ("example.net!user@example.test", 550, b"5.1.1"),    # bang path: a local name, unknown
    ("@example.test:user@example.net", 550, b"5.7.1"),   # source route stripped, then relay denied
    ('"user@example.net"@example.test', 501, b"5.1.3"),  # quoted @: syntax error
    ("alice@example.net@example.test", 501, b"5.1.3"),   # two @
]


@pytest.mark.parametrize("rcpt,code,enhanced", REFUSED, ids=[r[0] for r in REFUSED])
def test_recipient_refused_and_nothing_queued(running, rcpt, code, enhanced):
    with smtplib.SMTP(running.host, running.port, timeout=10) as client:
        client.ehlo("client.example.net")
        assert client.mail("bob@example.net")[0] == 250
        got_code, text = client.docmd(f"RCPT TO:<{rcpt}>")
        assert (got_code, text[:5]) == (code, enhanced), text
        got_code, _ = client.docmd("DATA")
        assert got_code == 503  # no recipient was accepted: no transaction to queue
    assert "smtp failed-command" in running.log()
    running.stop()
    assert [p for p in running.queued_files()] == []
    assert running.delivered("alice") == [] and running.delivered("bob") == []
