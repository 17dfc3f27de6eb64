"""One dialogue per row of the reply table (docs/smtp.md, Replies), against the running daemon.

Each row is data: the listener, then steps of (line sent, reply expected as
a prefix of the last reply line).  `TLS` upgrades the connection, `LOGIN`
authenticates as gilles.  Rows not here: 421 4.3.2 (pause smtp: the control
channel), 451 4.2.4 / 550 5.2.4 (mailing-list expansion: lookup/), 534
(never sent).
"""

from __future__ import annotations

import base64
import errno
import socket
import sqlite3
from dataclasses import dataclass

import pytest

from .conftest import HOSTNAME
from .inproc import PASSWORD, USER, secure_uvloop  # noqa: F401 (fixture)

TLS = "TLS"
LOGIN = ("AUTH PLAIN " + base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode(), "235 2.0.0")
EHLO = ("EHLO client.example.net", "250 HELP")
MAIL = ("MAIL FROM:<bob@example.net>", "250 2.0.0 Ok")
RCPT = ("RCPT TO:<alice@example.test>", "250 2.1.5 Destination address valid: Recipient ok")
DATA = ("DATA", '354 Enter mail, end with "." on a line by itself')
SUBMIT = ["submission", EHLO, TLS, EHLO]


@dataclass(frozen=True)
class Row:
    code: str
    steps: list
    limits: dict | None = None


ROWS = [
    Row("250 2.0.0 Ok", ["plain", EHLO, ("NOOP", "250 2.0.0 Ok"), MAIL]),
    Row("250 2.0.0 Reset state", ["plain", EHLO, MAIL, ("RSET", "250 2.0.0 Reset state")]),
    Row("250 2.0.0 accepted", ["plain", EHLO, MAIL, RCPT, DATA,
                               ("Subject: x\r\n\r\nbody\r\n.", "250 2.0.0 ")]),
    Row("250 2.0.0 octets", ["plain", EHLO, MAIL, RCPT, ("BDAT 3\r\na", "250 2.0.0 3 octets received")]),
    Row("250 2.1.5", ["plain", EHLO, MAIL, RCPT]),
    Row("354", ["plain", EHLO, MAIL, RCPT, DATA]),
    Row("421 4.4.2", ["plain", ("", "421 4.4.2 Timeout")], {"command_timeout": 0.3}),
    Row("421 4.7.0 sessions", ["plain-busy", ("", "421 4.7.0 Too many connections")],
        {"max_sessions_per_ip": 1}),
    Row("421 4.7.0 failed", ["plain", *[("FOO", "500 5.5.1")] * 3, ("", "421 4.7.0")],
        {"max_failed_commands": 3}),
    Row("421 4.7.0 rejected rcpt", ["plain", EHLO, MAIL, ("RCPT TO:<nobody@example.test>", "550 5.1.1"),
                                     ("RCPT TO:<x@example.test>", "550 5.1.1"), ("", "421 4.7.0 Too many rejected")],
        {"max_rejected_rcpt": 2}),
    Row("452 4.3.1", ["plain", EHLO, ("MAIL FROM:<bob@example.net>", "452 4.3.1 Insufficient system storage"),
                      ("NOOP", "250 2.0.0 Ok")], {"queue_min_free": 1 << 62}),
    Row("452 4.5.3 rcpt", ["plain", EHLO, MAIL, RCPT, ("RCPT TO:<bob@example.test>", "452 4.5.3 Too many recipients")],
        {"max_rcpt": 1}),
    Row("452 4.5.3 mails", ["plain", EHLO, MAIL, RCPT, DATA, ("x\r\n.", "250 2.0.0"),
                            ("MAIL FROM:<bob@example.net>", "452 4.5.3 Too many messages sent")],
        {"max_mails": 1}),
    Row("500 5.5.1", ["plain", ("FOO", "500 5.5.1 Invalid command: Command unrecognized")]),
    Row("500 5.5.2", ["plain", ("NOOP " + "x" * 5000, "500 5.5.2 Line too long")]),
    Row("501 5.5.4", ["plain", ("HELO a..b", "501 5.5.4"), EHLO, ("RSET now", "501 5.5.4"),
                      ("MAIL FROM:<a@b> SIZE=x", "501 5.5.4")]),
    Row("501 5.1.3", ["plain", EHLO, MAIL, ("RCPT TO:<>", "501 5.1.3 Recipient address syntax error")]),
    Row("501 5.5.2", [*SUBMIT, ("AUTH PLAIN !!", "501 5.5.2")]),
    Row("501 5.0.0", [*SUBMIT, ("AUTH LOGIN", "334 VXNlcm5hbWU6"), ("*", "501 5.0.0")]),
    Row("502 5.5.1", ["plain", EHLO, ("VRFY root", "502 5.5.1"), ("EXPN staff", "502 5.5.1"),
                      ("STARTTLS", "502 5.5.1"), ("AUTH PLAIN", "502 5.5.1")]),
    Row("503 5.5.1", ["plain", MAIL[:1] + ("503 5.5.1",), EHLO, ("RCPT TO:<a@b>", "503 5.5.1"),
                      MAIL, ("MAIL FROM:<a@b>", "503 5.5.1"), ("DATA", "503 5.5.1"),
                      RCPT, ("BDAT 3\r\nx", "250 2.0.0 3 octets"), ("DATA", "503 5.5.1 Bad sequence of commands: DATA after BDAT")]),
    Row("504 5.5.4", [*SUBMIT, ("AUTH CRAM-MD5", "504 5.5.4 Unrecognized authentication type")]),
    Row("530 5.7.0", ["submission", EHLO, ("MAIL FROM:<gilles@example.test>", "530 5.7.0 Must issue a STARTTLS"),
                      TLS, EHLO, ("MAIL FROM:<gilles@example.test>", "530 5.7.0 Authentication required")]),
    Row("535 5.7.8", [*SUBMIT, ("AUTH PLAIN " + base64.b64encode(b"\0gilles\0no").decode(), "535 5.7.8")]),
    Row("538 5.7.11", ["submission", EHLO, (LOGIN[0], "538 5.7.11")]),
    Row("550 5.1.1", ["plain", EHLO, MAIL, ("RCPT TO:<nobody@example.test>", "550 5.1.1 Invalid recipient")]),
    Row("550 5.7.1", ["plain", EHLO, MAIL, ("RCPT TO:<x@example.net>", "550 5.7.1 Invalid recipient")]),
    Row("552 5.3.4", ["plain", EHLO, ("MAIL FROM:<a@b> SIZE=5000", "552 5.3.4"), MAIL, RCPT, DATA,
                      ("x" * 2000 + "\r\n.", "552 5.3.4 Message too big for system")],
        {"max_message_size": 1000}),
    Row("553 5.1.7", ["plain", EHLO, ("MAIL FROM:<a..b@c>", "553 5.1.7 Sender address syntax error")]),
    Row("553 5.7.1", [*SUBMIT, LOGIN, ("MAIL FROM:<alice@example.test>", "553 5.7.1 Sender not allowed")]),
    Row("553 5.6.7", ["plain", EHLO, ("MAIL FROM:<jörg@example.net>", "553 5.6.7")]),
    Row("554 5.4.6", ["plain", EHLO, MAIL, RCPT, DATA,
                      ("Received: x\r\n" * 100 + "\r\nbody\r\n.", "554 5.4.6 Routing loop detected")]),
    Row("554 5.6.0", ["plain", EHLO, MAIL, RCPT, DATA,
                      (" x: y\r\n\r\nbody\r\n.", "554 5.6.0 Message is not RFC 5322 compliant")]),
    Row("555 5.5.4", ["plain", EHLO, ("MAIL FROM:<a@b> FOO=bar", "555 5.5.4 Unsupported parameter")]),
    Row("221 214", ["plain", ("HELP", "214 2.0.0 End of HELP info"), ("QUIT", "221 2.0.0 Bye")]),
    Row("220 235", [*SUBMIT, LOGIN]),
]


def converse(proc, steps) -> None:
    port = steps[0]
    busy = port.endswith("-busy")
    if busy:
        port = port[:-5]
        keep = socket.create_connection((proc.host, proc.ports[port]), timeout=10)
        keep.makefile("rb").readline()
    sock = socket.create_connection((proc.host, proc.ports[port]), timeout=10)
    f = sock.makefile("rb")
    first = f.readline()
    if not busy:
        assert first.startswith(b"220 "), first
    else:
        assert first.startswith(b"421 4.7.0"), first
        return
    for step in steps[1:]:
        if step == TLS:
            sock.sendall(b"STARTTLS\r\n")
            assert f.readline() == b"220 2.0.0 Ready to start TLS\r\n"
            sock = proc.client_context().wrap_socket(sock, server_hostname=HOSTNAME)
            f = sock.makefile("rb")
            continue
        line, expected = step
        if line:
            sock.sendall(line.encode() + b"\r\n")
        while True:
            reply = f.readline().decode()
            if reply[3:4] != "-":
                break
        assert reply.startswith(expected), (line[:40], reply, expected)
    sock.close()


@pytest.mark.parametrize("row", ROWS, ids=[r.code for r in ROWS])
def test_reply_row(secure_uvloop, row):
    if row.limits:
        secure_uvloop.set_limits(**row.limits)
    converse(secure_uvloop, row.steps)


def test_reply_421_4_3_0_queue_write_failed(secure_uvloop):
    proc = secure_uvloop

    async def broken():
        raise OSError(errno.EIO, "Input/output error")

    proc.daemon.store.create = broken
    converse(proc, ["plain", EHLO, MAIL, RCPT, ("DATA", "421 4.3.0 Temporary Error")])


def test_reply_452_4_3_1_queue_full_at_data_keeps_the_session(secure_uvloop):
    proc = secure_uvloop

    async def full():
        raise OSError(errno.ENOSPC, "No space left on device")

    proc.daemon.store.create = full
    converse(proc, ["plain", EHLO, MAIL, RCPT,
                    ("DATA", "452 4.3.1 Insufficient system storage"),
                    ("BDAT 3 LAST\r\nx", "452 4.3.1 Insufficient system storage"),
                    ("RSET", "250 2.0.0 Reset state"), ("NOOP", "250 2.0.0 Ok")])


def test_reply_451_4_3_0_table_error(secure_uvloop):
    db = sqlite3.connect(secure_uvloop.fixture.root / "tables.sqlite")
    db.execute("DROP TABLE virtuals")
    db.commit()
    db.close()
    converse(secure_uvloop, ["plain", EHLO, MAIL,
                             ("RCPT TO:<alice@example.test>", "451 4.3.0 Temporary failure")])


def test_reply_454_4_7_0_credentials_error(secure_uvloop):
    db = sqlite3.connect(secure_uvloop.fixture.root / "tables.sqlite")
    db.execute("DROP TABLE credentials")
    db.commit()
    db.close()
    converse(secure_uvloop, [*SUBMIT, (LOGIN[0], "454 4.7.0 Temporary authentication failure")])
