"""A real client sends to the real daemon; the Maildir holds the message."""

from __future__ import annotations

import re
import shutil
import smtplib
import socket
import subprocess

from tests.e2e.conftest import DOMAIN

BODY = (
    "From: bob@example.test\r\n"
    "To: alice@example.test\r\n"
    "Subject: hello\r\n"
    "\r\n"
    "first line\r\n"
    ".a line that starts with a dot\r\n"
    "..two dots\r\n"
    ".\tdot then tab\r\n"
    "last line\r\n"
)


def split_delivered(raw: bytes) -> tuple[list[bytes], bytes]:
    """(headers we added, the rest): our prefix is Return-Path, Delivered-To, Received."""
    lines = raw.split(b"\n")
    assert lines[0].startswith(b"Return-Path: <"), raw[:200]
    assert lines[1].startswith(b"Delivered-To: "), raw[:200]
    assert lines[2].startswith(b"Received: from "), raw[:200]
    i = 3
    while lines[i].startswith(b"\t"):
        i += 1
    return lines[:i], b"\n".join(lines[i:])


def test_smtplib_message_lands_in_maildir_exactly(running):
    with smtplib.SMTP(running.host, running.port, timeout=10) as client:
        client.ehlo("client.example.net")
        refused = client.sendmail("bob@example.test", ["alice@example.test"], BODY.encode())
        assert refused == {}
    [path] = running.wait_delivered("alice")
    added, rest = split_delivered(path.read_bytes())
    # smtplib dot-stuffs, the server unstuffs: the body arrives as written,
    # with the Maildir's LF line ends.
    assert rest == BODY.replace("\r\n", "\n").encode()
    assert sum(1 for line in added if line.startswith(b"Received:")) == 1
    assert b"by mx.example.test (Postillion) with ESMTP id " in b"\n".join(added)
    assert b"for <alice@example.test>;" in b"\n".join(added)
    assert b"Received: from client.example.net (localhost [127.0.0.1])" in added[2]
    # RFC 5322 §3.3: "-0000" means "zone unknown"; we know ours.
    assert re.search(rb";\n\t\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}$",
                     b"\n".join(added))
    assert not b"\n".join(added).endswith(b"-0000")
    assert b"Delivered-To: alice@example.test" in added[1]
    log = running.wait_log("result=Ok stat=Delivered")
    assert "smtp connected address=127.0.0.1 host=localhost" in log  # PTR via /etc/hosts
    assert "smtp message msgid=" in log and "nrcpt=1" in log
    assert "mda delivery evpid=" in log and "result=Ok stat=Delivered" in log
    # Once delivered, nothing is left in the queue.
    running.stop()
    assert [p for p in running.queued_files() if "corrupt" not in p.parts] == []


def test_alias_postmaster_reaches_alice(running):
    with smtplib.SMTP(running.host, running.port, timeout=10) as client:
        client.sendmail("someone@example.net", [f"PostMaster@{DOMAIN}"], b"Subject: x\r\n\r\nhi\r\n")
    [path] = running.wait_delivered("alice")
    assert b"Delivered-To: alice@example.test" in path.read_bytes()
    assert running.delivered("bob") == []


def test_swaks_sends(running):
    swaks = shutil.which("swaks")
    assert swaks, "swaks is missing: `make test` installs it (Debian package swaks)"
    result = subprocess.run(
        [swaks, "--server", f"{running.host}:{running.port}", "--from", "alice@example.test",
         "--to", "bob@example.test", "--helo", "swaks.example.net",
         "--header", "Subject: via swaks", "--body", "sent by swaks\n.with a dot\n"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    [path] = running.wait_delivered("bob")
    raw = path.read_bytes()
    assert b"Subject: via swaks" in raw
    assert b"\nsent by swaks\n.with a dot\n" in raw
    assert b"from swaks.example.net" in raw


def test_pipelined_batch_gets_replies_in_order(running):
    with socket.create_connection((running.host, running.port), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220 ")
        s.sendall(b"EHLO client.example.net\r\n")
        line = f.readline()
        while line[3:4] == b"-":
            line = f.readline()
        s.sendall(b"MAIL FROM:<bob@example.test>\r\n"
                  b"RCPT TO:<alice@example.test>\r\n"
                  b"RCPT TO:<nobody@example.test>\r\n"
                  b"DATA\r\n")
        replies = [f.readline() for _ in range(4)]
        assert replies[0].startswith(b"250 2.0.0 ")
        assert replies[1].startswith(b"250 2.1.5 ")
        assert replies[2].startswith(b"550 5.1.1 ")
        assert replies[3].startswith(b"354 ")
        s.sendall(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        assert f.readline().startswith(b"250 2.0.0 ")
        assert f.readline().startswith(b"221 ")
    running.wait_delivered("alice")


def test_large_message_takes_the_streaming_path(running):
    """Above the inline limit (1 MiB) delivery streams from the queue file."""
    line = b"x" * 998 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * 1600  # ~1.6 MB
    with smtplib.SMTP(running.host, running.port, timeout=30) as client:
        client.sendmail("bob@example.test", ["alice@example.test"], body)
    [path] = running.wait_delivered("alice")
    raw = path.read_bytes()
    assert raw.endswith(b"\n" + (b"x" * 998 + b"\n") * 1600)
    assert path.stat().st_uid == path.parent.parent.stat().st_uid  # as the user, not root
