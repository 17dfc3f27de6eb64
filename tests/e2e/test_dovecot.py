"""Dovecot reads what we deliver: a real client sends to `postillion run`,
which delivers through its maildir action (into the Maildir Dovecot serves)
or its lmtp action (to Dovecot's LMTP, on a port and on a Unix socket), and
the message is fetched back over IMAP with imaplib.

What is compared, byte for byte: the message IMAP returns (BODY[], CRLF
line ends) is exactly the header fields each path adds, then every octet
the client sent (after SMTP's dot-unstuffing), unchanged.  The fields
added, in order:

* maildir: `Return-Path: <sender>`, `Delivered-To: <recipient after
  expansion>` (ours, docs/smtp.md), then our `Received:`;
* lmtp: Dovecot's `Return-Path: <sender>`, `Delivered-To: <the RCPT TO>`
  and `Received: from <our LHLO name> ... with LMTP ... for <the RCPT
  TO>`, then our `Received:` -- no Return-Path or Delivered-To of ours.

One daemon and one Dovecot serve the whole module: each test tells its
message apart by Message-ID.
"""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dovecot import PrivateDovecot, make_dovecot
from tests.e2e.conftest import Daemon, delivery_ids, free_port

HOSTNAME = "mx.example.test"
SENDER = "postmaster@maildir.example.test"

CONFIG = """\
hostname {hostname}
table domains file:{root}/domains
table virtuals file:{root}/virtuals
table users file:{root}/users
listen on 127.0.0.1 port {port} hostname {hostname}
action "maildir" maildir virtual <virtuals> userbase <users>
action "tcp" lmtp {lmtp} rcpt-to virtual <virtuals> userbase <users>
action "unix" lmtp "{socket}" virtual <virtuals> userbase <users>
match from any for domain "maildir.example.test" action "maildir"
match from any for domain "tcp.example.test" action "tcp"
match from any for domain "unix.example.test" action "unix"
"""

#: Every octet of this reaches the mailbox: dots, a "From " line, trailing
#: blanks, a tab, 8-bit UTF-8, an empty line, no trailing garbage.
MESSAGE = (
    "Message-ID: <{mid}@example.test>\r\n"
    "From: Postmaster <postmaster@maildir.example.test>\r\n"
    "To: alice\r\n"
    "Subject: =?utf-8?q?caf=C3=A9?= byte for byte\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "first line\r\n"
    ".a line that starts with a dot\r\n"
    "..two dots\r\n"
    ".\r\n"
    "From the start of a line\r\n"
    "trailing blanks   \r\n"
    "\ta tab\r\n"
    "caf\u00e9 \u2014 8-bit UTF-8\r\n"
    "\r\n"
    "last line\r\n"
)


class Site:
    """The daemon and Dovecot of this module."""

    def __init__(self, daemon: Daemon, dovecot: PrivateDovecot) -> None:
        self.daemon, self.dovecot = daemon, dovecot

    def send(self, rcpts: list[str], mid: str) -> bytes:
        message = MESSAGE.format(mid=mid).encode()
        with smtplib.SMTP(self.daemon.host, self.daemon.port, timeout=10) as client:
            client.ehlo("client.example.net")
            assert client.sendmail(SENDER, rcpts, message) == {}
        return message


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    root = Path(tempfile.mkdtemp(prefix="postillion-dovecot-e2e-", dir="/tmp"))
    os.chmod(root, 0o755)
    mail = root / "mail"
    dovecot = make_dovecot(root / "dovecot", {"alice": "pw", "bob": "pw", "dave": "pw"}, mail)
    uid, gid = delivery_ids()
    (mail / "carol").mkdir(mode=0o700)          # in our userbase, unknown to Dovecot
    os.chown(mail / "carol", uid, gid)
    (root / "domains").write_text("maildir.example.test\ntcp.example.test\nunix.example.test\n")
    (root / "virtuals").write_text(
        "alice@maildir.example.test alice\n"
        "postmaster@maildir.example.test dave\n"
        "alice@tcp.example.test alice\n"
        "bob@tcp.example.test bob\n"
        "carol@tcp.example.test carol\n"
        "alice@unix.example.test alice\n")
    (root / "users").write_text("".join(f"{user} {uid}:{gid}:{mail / user}\n"
                                        for user in ("alice", "bob", "carol", "dave")))
    port = free_port()
    config = root / "postillion.conf"
    config.write_text(CONFIG.format(hostname=HOSTNAME, root=root, port=port,
                                    lmtp=dovecot.lmtp_address, socket=dovecot.lmtp_socket))
    daemon = Daemon(root=root, mail=mail, config=config, spool=root / "spool",
                    host="127.0.0.1", port=port)
    try:
        dovecot.start()
        daemon.start()
        yield Site(daemon, dovecot)
    finally:
        daemon.stop()
        dovecot.stop()
        shutil.rmtree(root, ignore_errors=True)


def added_fields(fetched: bytes, sent: bytes) -> list[bytes]:
    """The header fields in front of what was sent, each unfolded; the rest
    must be the sent octets exactly."""
    assert len(fetched) > len(sent) and fetched[-len(sent):] == sent, fetched
    head = fetched[:-len(sent)]
    assert head.endswith(b"\r\n")
    fields: list[bytes] = []
    for line in head[:-2].split(b"\r\n"):
        if line[:1] in (b"\t", b" "):
            fields[-1] += b" " + line.strip()
        else:
            fields.append(line)
    return fields


def our_received(field: bytes, rcpt: str) -> None:
    assert field.startswith(b"Received: from client.example.net (localhost [127.0.0.1]) "
                            b"by mx.example.test (Postillion) with ESMTP id "), field
    assert f"for <{rcpt}>;".encode() in field


def test_maildir_delivery_is_read_by_dovecot_byte_for_byte(site):
    sent = site.send(["alice@maildir.example.test"], "maildir-1")
    fetched = site.dovecot.wait_message("alice", b"<maildir-1@example.test>")
    fields = added_fields(fetched, sent)
    assert fields[:2] == [f"Return-Path: <{SENDER}>".encode(),
                          b"Delivered-To: alice@maildir.example.test"]
    assert len(fields) == 3
    our_received(fields[2], "alice@maildir.example.test")


def test_lmtp_over_tcp_is_read_by_dovecot_byte_for_byte(site):
    sent = site.send(["alice@tcp.example.test"], "tcp-1")
    fetched = site.dovecot.wait_message("alice", b"<tcp-1@example.test>")
    fields = added_fields(fetched, sent)
    # `rcpt-to`: RCPT TO the recipient address after expansion.
    assert fields[:2] == [f"Return-Path: <{SENDER}>".encode(),
                          b"Delivered-To: alice@tcp.example.test"]
    assert len(fields) == 4
    assert re.match(rb"Received: from mx\.example\.test \(\[127\.0\.0\.1\]\) by \S+ with LMTP id \S+ "
                    rb"\(envelope-from <postmaster@maildir\.example\.test>\) "
                    rb"for <alice@tcp\.example\.test>; ", fields[2]), fields[2]
    our_received(fields[3], "alice@tcp.example.test")
    log = site.daemon.wait_log("to=<alice@tcp.example.test>")
    assert re.search(r"mda delivery evpid=\w+ from=<postmaster@maildir.example.test> "
                     r"to=<alice@tcp.example.test> rcpt=<alice@tcp.example.test> user=alice "
                     r"delay=\d+s result=Ok stat=Delivered", log), log


def test_lmtp_over_a_unix_socket_sends_the_user_name(site):
    sent = site.send(["alice@unix.example.test"], "unix-1")
    fetched = site.dovecot.wait_message("alice", b"<unix-1@example.test>")
    fields = added_fields(fetched, sent)
    # Without `rcpt-to`: RCPT TO the user's name from the userbase.
    assert fields[:2] == [f"Return-Path: <{SENDER}>".encode(), b"Delivered-To: alice"]
    assert len(fields) == 4
    assert re.match(rb"Received: from mx\.example\.test by \S+ with LMTP id \S+ "
                    rb"\(envelope-from <postmaster@maildir\.example\.test>\) for <alice>; ",
                    fields[2]), fields[2]
    our_received(fields[3], "alice@unix.example.test")


def test_each_recipient_gets_its_own_lmtp_answer(site):
    site.send(["alice@tcp.example.test", "carol@tcp.example.test", "bob@tcp.example.test"], "split-1")
    for user in ("alice", "bob"):
        site.dovecot.wait_message(user, b"<split-1@example.test>")
    # carol is ours but unknown to Dovecot: 550 at RCPT, a bounce at once.
    log = site.daemon.wait_log("to=<carol@tcp.example.test> rcpt=<carol@tcp.example.test> "
                               "user=carol")
    assert re.search(r"to=<carol@tcp\.example\.test> rcpt=<carol@tcp\.example\.test> user=carol "
                     r"delay=\d+s result=PermFail stat=\"550 5\.1\.1 <carol@tcp\.example\.test> "
                     r"User doesn't exist", log), log
    bounce = site.dovecot.wait_message("dave", b"<split-1@example.test>")
    report = bounce.split(b"Content-Type: message/rfc822")[0]
    assert b"Final-Recipient: rfc822;carol@tcp.example.test\r\nAction: failed\r\n" \
        b"Status: 5.1.1\r\n" in report
    assert b"alice@" not in report and b"bob@" not in report
