"""The README's submission setup, written as smtpd.conf and run as `postillion
run` (a subprocess, uvloop when installed): swaks sends through 587 with
STARTTLS + AUTH and through 465 with SMTPS, against an SQLite credentials
table."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import trustme

from postillion.config import parse

from .conftest import HOSTNAME, free_port
from .inproc import CREDENTIALS_QUERIES, PASSWORD, USER, add_credentials

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_config() -> str:
    section = README.read_text().split("## Submission", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\n(.*?)```", section, re.S)[0]


def test_readme_submission_config_parses():
    config = parse(readme_config(), "smtpd.conf")
    ports = {listener.effective_port: listener for listener in config.listeners}
    assert ports[587].tls_require and ports[587].auth == "required" and ports[587].auth_table == "creds"
    assert ports[465].smtps and ports[25].tls


def test_swaks_through_the_configured_daemon(daemon):
    ca = trustme.CA()
    cert = ca.issue_cert(HOSTNAME, "127.0.0.1")
    cert.private_key_pem.write_to_path(str(daemon.root / "mx.key"))
    cert.cert_chain_pems[0].write_to_path(str(daemon.root / "mx.crt"))
    add_credentials(daemon.root / "tables.sqlite")
    backend = daemon.root / "sqlite.conf"
    backend.write_text(backend.read_text() + CREDENTIALS_QUERIES)
    submission, smtps = free_port(), free_port()
    daemon.config.write_text(daemon.config.read_text() + f"""
pki {HOSTNAME} cert "{daemon.root / 'mx.crt'}"
pki {HOSTNAME} key "{daemon.root / 'mx.key'}"
table creds sqlite:{backend}
listen on {daemon.host} port {submission} hostname {HOSTNAME} tls-require auth <creds> senders <creds> received-auth
listen on {daemon.host} port {smtps} hostname {HOSTNAME} smtps auth <creds> senders <creds>
""")
    daemon.start()
    for port, mode, mechanism in ((submission, "--tls", "PLAIN"), (smtps, "--tlsc", "LOGIN")):
        out = subprocess.run(
            ["swaks", "--server", daemon.host, "--port", str(port), mode, "--auth", mechanism,
             "--auth-user", USER, "--auth-password", PASSWORD, "--from", f"{USER}@example.test",
             "--to", "alice@example.test", "--helo", "client.example.net", "--timeout", "20"],
            capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
    files = daemon.wait_delivered("alice", 2)
    texts = [f.read_bytes() for f in files]
    assert all(b"with ESMTPSA id" in t for t in texts)
    assert any(f"auth=yes user={USER}".encode() in t for t in texts)
    log = daemon.log()
    assert log.count(f"smtp authentication user={USER} result=ok") == 2
    assert PASSWORD not in log
