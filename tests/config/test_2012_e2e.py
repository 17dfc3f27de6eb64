"""A 2012-grammar config runs the real daemon; a config it cannot honour does not start.

The administrator's promise (issue: "one who kept a 2012-era config must be
able to run it"): `accept ... deliver to maildir` takes mail for a virtual
domain end to end, exactly as the modern config it converts to; and an
option the runtime does not implement yet stops `postillion run` with the
file, line and option, rather than being ignored.
"""

from __future__ import annotations

import smtplib
import subprocess
import sys

from postillion.config import support

from tests.e2e.conftest import DOMAIN, daemon  # noqa: F401  (the fixture)

LEGACY = """\
table domains sqlite:{backend}
table virtuals sqlite:{backend}
table users sqlite:{backend}
listen on {host} port {port} hostname mx.example.test
accept from any for domain <domains> virtual <virtuals> users <users> deliver to maildir
"""


def send(d, rcpt: str) -> None:  # type: ignore[no-untyped-def]
    with smtplib.SMTP(d.host, d.port, timeout=30) as client:
        client.sendmail("sender@example.net", [rcpt], b"Subject: 2012\r\n\r\nold config\r\n")


def test_2012_config_delivers(daemon) -> None:  # noqa: F811
    daemon.config.write_text(LEGACY.format(backend=daemon.root / "sqlite.conf",
                                           host=daemon.host, port=daemon.port))
    daemon.start()
    send(daemon, f"alice@{DOMAIN}")
    (message,) = daemon.wait_delivered("alice")
    assert b"old config" in message.read_bytes()


def test_converted_2012_config_delivers_the_same(daemon) -> None:  # noqa: F811
    legacy = daemon.root / "legacy.conf"
    legacy.write_text(LEGACY.format(backend=daemon.root / "sqlite.conf",
                                    host=daemon.host, port=daemon.port))
    converted = subprocess.run([sys.executable, "-m", "postillion.cli", "check", "--convert",
                                "-f", str(legacy)], capture_output=True, text=True, timeout=60)
    assert converted.returncode == 0, converted.stderr
    assert "\nmatch from any for domain <domains> action \"legacy-" in converted.stdout
    daemon.config.write_text(converted.stdout)
    daemon.start()
    send(daemon, f"bob@{DOMAIN}")
    daemon.wait_delivered("bob")


# Options no part of the runtime implemented when this was written; the test
# takes the first still missing (the list only shrinks as features land).
CANDIDATES = {
    "queue compression": ("queue compression", 7),
    "scheduler limit": ("scheduler limit max-inflight 10", 11),
    "mda limit": ("mda limit max-session 10", 5),
    "bounce warn-interval": ("bounce warn-interval 1h", 8),
}


def test_daemon_refuses_an_option_it_does_not_implement(daemon) -> None:  # noqa: F811
    missing = [k for k in CANDIDATES if k not in support.IMPLEMENTED]
    assert missing, "every candidate is implemented now: add a still-missing option to CANDIDATES"
    line, column = CANDIDATES[missing[0]]
    daemon.config.write_text(
        LEGACY.format(backend=daemon.root / "sqlite.conf", host=daemon.host, port=daemon.port)
        + line + "\n")
    result = subprocess.run([sys.executable, "-m", "postillion.cli", "run", "-d", "-f",
                             str(daemon.config), "-s", str(daemon.spool)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f'{daemon.config}:6:{column}: "{missing[0]}" is not implemented by the runtime yet' \
        in result.stderr
