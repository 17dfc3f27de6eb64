"""STARTTLS and SMTPS with real clients: smtplib, swaks; certificates from trustme."""

from __future__ import annotations

import smtplib
import socket
import ssl
import subprocess

import pytest

from .conftest import HOSTNAME
from .inproc import PASSWORD, USER, secure, secure_uvloop  # noqa: F401 (fixtures)

BODY = "Subject: over TLS\r\n\r\nsecret body\r\n"


def test_starttls_then_deliver(secure):
    with smtplib.SMTP(secure.host, secure.ports["mx"], timeout=10) as client:
        client.ehlo("client.example.net")
        assert client.has_extn("starttls") and not client.has_extn("auth")
        client.starttls(context=secure.client_context())
        client.ehlo("client.example.net")
        assert not client.has_extn("starttls")
        assert client.sendmail("bob@example.net", ["alice@example.test"], BODY) == {}
    [path] = secure.wait_delivered("alice")
    raw = path.read_bytes()
    assert b"with ESMTPS id" in raw
    assert b"(TLSv1.3:" in raw or b"(TLSv1.2:" in raw
    assert b"Message-ID:" not in raw  # port 25, not authenticated: left as sent
    assert "smtp tls ciphers=TLSv1" in secure.log()


def test_injection_after_starttls_is_discarded(secure):
    """STARTTLS\\r\\nRSET\\r\\n in one write: only the 220 comes back."""
    with socket.create_connection((secure.host, secure.ports["mx"]), timeout=10) as raw:
        f = raw.makefile("rb")
        assert f.readline().startswith(b"220 ")
        raw.sendall(b"EHLO c.example\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        raw.sendall(b"STARTTLS\r\nRSET\r\nMAIL FROM:<evil@example.net>\r\n")
        assert f.readline() == b"220 2.0.0 Ready to start TLS\r\n"
        tls = secure.client_context().wrap_socket(raw, server_hostname=HOSTNAME)
        tls.settimeout(10)
        g = tls.makefile("rb")
        # The injected RSET/MAIL were never answered, and MAIL needs EHLO again.
        tls.sendall(b"MAIL FROM:<a@example.net>\r\n")
        assert g.readline().startswith(b"503 5.5.1")
        tls.sendall(b"EHLO c.example\r\n")
        lines = []
        while True:
            line = g.readline()
            lines.append(line)
            if line.startswith(b"250 "):
                break
        assert b"250-STARTTLS\r\n" not in lines
        tls.sendall(b"STARTTLS\r\n")
        assert g.readline().startswith(b"503 5.5.1")
        tls.sendall(b"QUIT\r\n")
        assert g.readline().startswith(b"221")


def test_smtps_with_auth(secure):
    ctx = secure.client_context()
    with smtplib.SMTP_SSL(secure.host, secure.ports["smtps"], timeout=10, context=ctx) as client:
        client.ehlo("client.example.net")
        assert not client.has_extn("starttls")
        assert client.has_extn("auth")
        client.login(USER, PASSWORD)
        assert client.sendmail(f"{USER}@example.test", ["alice@example.test"], BODY) == {}
    [path] = secure.wait_delivered("alice")
    assert b"with ESMTPSA id" in path.read_bytes()


def test_tls_require_before_starttls(secure):
    with smtplib.SMTP(secure.host, secure.ports["submission"], timeout=10) as client:
        client.ehlo("client.example.net")
        assert not client.has_extn("auth")  # AUTH only once on TLS
        code, text = client.docmd("MAIL FROM:<gilles@example.test>")
        assert (code, text) == (530, b"5.7.0 Must issue a STARTTLS command first")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_12_minimum(secure):
    ctx = secure.client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    with pytest.raises((ssl.SSLError, ConnectionError, smtplib.SMTPServerDisconnected)):
        with smtplib.SMTP_SSL(secure.host, secure.ports["smtps"], timeout=10, context=ctx):
            pass


def test_client_certificate_required(secure_uvloop):
    proc = secure_uvloop
    ctx = proc.client_context()
    with smtplib.SMTP(proc.host, proc.ports["verify"], timeout=10) as client:
        client.ehlo("client.example.net")
        with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
            client.starttls(context=ctx)
            client.ehlo("client.example.net")  # TLS 1.3 reports the refusal here
    cert = proc.ca.issue_cert("client.example.net")
    cert.configure_cert(ctx)
    with smtplib.SMTP(proc.host, proc.ports["verify"], timeout=10) as client:
        client.ehlo("client.example.net")
        client.starttls(context=ctx)
        client.ehlo("client.example.net")
        assert client.sendmail("bob@example.net", ["alice@example.test"], BODY) == {}
    [path] = proc.wait_delivered("alice")
    assert b":YES)" in path.read_bytes()


def test_handshake_timeout(secure_uvloop):
    """A client that says STARTTLS and then never speaks TLS is dropped
    after tls_timeout; another client is served meanwhile."""
    proc = secure_uvloop
    import dataclasses
    for listener in proc.daemon.listeners:
        listener.ctx = dataclasses.replace(
            listener.ctx, limits=dataclasses.replace(listener.ctx.limits, tls_timeout=0.5))
    with socket.create_connection((proc.host, proc.ports["mx"]), timeout=10) as raw:
        f = raw.makefile("rb")
        assert f.readline().startswith(b"220 ")
        raw.sendall(b"EHLO c.example\r\nSTARTTLS\r\n")
        while not f.readline().startswith(b"220 "):
            pass
        assert f.read() == b""  # closed
    proc.wait_log("smtp disconnected reason=tls-failure")


SWAKS = ["swaks", "--server", "127.0.0.1", "--helo", "client.example.net", "--timeout", "20",
         "--to", "alice@example.test", "--body", "hello from swaks"]


@pytest.mark.parametrize("mode,port,auth", [
    ("--tls", "submission", "PLAIN"),
    ("--tls", "submission", "LOGIN"),
    ("--tlsc", "smtps", "PLAIN"),
    ("--tlsc", "smtps", "LOGIN"),
])
def test_swaks(secure_uvloop, mode, port, auth):
    proc = secure_uvloop
    out = subprocess.run(
        [*SWAKS, "--port", str(proc.ports[port]), mode, "--from", f"{USER}@example.test",
         "--auth", auth, "--auth-user", USER, "--auth-password", PASSWORD],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "235 2.0.0 Authentication succeeded" in out.stdout
    proc.wait_delivered("alice")
    proc.wait_log(f"smtp authentication user={USER} result=ok")
    assert PASSWORD not in proc.log()
