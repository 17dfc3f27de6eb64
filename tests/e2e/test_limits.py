"""The limits of docs/smtp.md and the hostile-input defences, against the real daemon.

Each test talks raw SMTP over a socket to the plain listener (or uses a real
client) and checks what the client sees, what is delivered and that nothing
else is queued.
"""

from __future__ import annotations

import asyncio
import socket
import time
import unicodedata

import aiosmtplib
import pytest

from postillion.smtp.tuning import Tuning

from .conftest import free_port
from .inproc import FAST, secure_uvloop  # noqa: F401 (fixture)


class Raw:
    """A line-oriented raw SMTP client."""

    def __init__(self, proc, port: str = "plain", banner: bool = True) -> None:
        self.sock = socket.create_connection((proc.host, proc.ports[port]), timeout=10)
        self.f = self.sock.makefile("rb")
        if banner:
            assert self.line().startswith(b"220 ")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        return self.f.readline()

    def reply(self) -> bytes:
        """One whole (possibly multi-line) reply, last line."""
        while True:
            line = self.line()
            if line[3:4] != b"-":
                return line

    def ehlo(self) -> None:
        self.send(b"EHLO client.example.net\r\n")
        self.reply()

    def closed(self) -> bool:
        return self.f.read() == b""

    def close(self) -> None:
        self.sock.close()


TX = b"MAIL FROM:<bob@example.net>\r\nRCPT TO:<alice@example.test>\r\n"


def test_early_talker_refused(secure_uvloop):
    proc = secure_uvloop
    proc.set_tuning(Tuning(banner_delay=0.3, banner_delay_local=0.3, auth_failure_delay=0))
    rude = Raw(proc, banner=False)
    rude.send(b"EHLO spam.example\r\n")
    assert rude.line() == b"554 5.5.0 Protocol error: talking before the greeting\r\n"
    assert rude.closed()
    polite = Raw(proc)  # waits for the banner, which comes after the delay
    polite.ehlo()
    polite.close()
    assert "reason=early-talker" in proc.wait_log("reason=early-talker")


def test_slow_client_times_out_fresh_client_served(secure_uvloop):
    """The line deadline runs from the first byte: trickling does not extend it."""
    proc = secure_uvloop
    proc.set_limits(command_timeout=1.0)
    slow = Raw(proc)
    start = time.monotonic()
    slow.sock.settimeout(0.2)
    got = b""
    for i, ch in enumerate(b"EHLO client.example.net"):
        slow.send(bytes([ch]))
        try:
            got = slow.sock.recv(100)
            break
        except (socket.timeout, TimeoutError):
            pass
        if i == 2:  # meanwhile another client is served at once
            fresh = Raw(proc)
            t = time.monotonic()
            fresh.ehlo()
            assert time.monotonic() - t < 0.5
            fresh.close()
    assert got == b"421 4.4.2 Timeout\r\n"
    assert 0.9 < time.monotonic() - start < 3.0


def test_idle_client_times_out(secure_uvloop):
    proc = secure_uvloop
    proc.set_limits(command_timeout=0.5)
    idle = Raw(proc)
    assert idle.line() == b"421 4.4.2 Timeout\r\n"
    assert idle.closed()


def test_session_timeout(secure_uvloop):
    proc = secure_uvloop
    proc.set_limits(session_timeout=1.0)
    client = Raw(proc)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        client.send(b"NOOP\r\n")
        line = client.line()
        if line.startswith(b"421"):
            assert line == b"421 4.4.2 Timeout\r\n"
            break
        time.sleep(0.1)
    else:
        pytest.fail("session never timed out")


def test_http_request_closes(secure_uvloop):
    client = Raw(secure_uvloop)
    client.send(b"POST / HTTP/1.1\r\nHost: mx\r\n\r\nMAIL FROM:<a@b>\r\n")
    assert client.line() == b"500 5.5.1 Invalid command: Command unrecognized\r\n"
    assert client.closed()


def test_sessions_per_ip(secure_uvloop):
    proc = secure_uvloop
    proc.set_limits(max_sessions_per_ip=2)
    first, second = Raw(proc), Raw(proc)
    third = Raw(proc, banner=False)
    assert third.line() == b"421 4.7.0 Too many connections, try again later\r\n"
    assert third.closed()
    first.close()
    second.close()


def test_too_many_sessions(secure_uvloop):
    proc = secure_uvloop
    proc.set_limits(max_sessions=1)
    first = Raw(proc)
    other = Raw(proc, banner=False)
    assert other.line().startswith(b"421 4.7.0")
    first.close()


def test_long_command_line_closes(secure_uvloop):
    client = Raw(secure_uvloop)
    client.send(b"NOOP " + b"x" * 5000 + b"\r\n")
    assert client.line() == b"500 5.5.2 Line too long\r\n"
    assert client.closed()


def test_too_many_failed_commands(secure_uvloop):
    client = Raw(secure_uvloop)
    client.send(b"FOO\r\n" * 10)
    for _ in range(10):
        assert client.line().startswith(b"500 5.5.1")
    assert client.line().startswith(b"421 4.7.0")
    assert client.closed()


def test_recipient_overflow_keeps_the_first(secure_uvloop):
    proc = secure_uvloop
    proc.set_limits(max_rcpt=2)
    client = Raw(proc)
    client.ehlo()
    client.send(b"MAIL FROM:<bob@example.net>\r\nRCPT TO:<alice@example.test>\r\n"
                b"RCPT TO:<bob@example.test>\r\nRCPT TO:<postmaster@example.test>\r\nDATA\r\n")
    assert [client.line()[:3] for _ in range(5)] == [b"250", b"250", b"250", b"452", b"354"]
    client.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert client.line().startswith(b"250 2.0.0")
    proc.wait_delivered("alice")
    proc.wait_delivered("bob")


SMUGGLING = [b"\n.\n", b"\r.\r\n", b"\n.\r\n", b"\r\n.\r", b"\r\n.\n"]


@pytest.mark.parametrize("fake", SMUGGLING, ids=[repr(s) for s in SMUGGLING])
def test_smuggling_never_splits_a_message(secure_uvloop, fake):
    proc = secure_uvloop
    client = Raw(proc)
    client.ehlo()
    client.send(TX + b"DATA\r\n")
    assert [client.line()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
    smuggled = b"MAIL FROM:<evil@example.net>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nforged\r\n"
    client.send(b"Subject: one\r\n\r\nbody" + fake + smuggled + b".\r\n")
    assert client.line().startswith(b"250 2.0.0")
    client.send(b"QUIT\r\n")
    assert client.line().startswith(b"221")
    [path] = proc.wait_delivered("alice")
    assert b"evil@example.net" in path.read_bytes()
    time.sleep(0.2)
    assert proc.delivered("bob") == []


def test_size_overflow_then_fake_end(secure_uvloop):
    proc = secure_uvloop
    proc.set_limits(max_message_size=1000)
    client = Raw(proc)
    client.ehlo()
    client.send(b"MAIL FROM:<bob@example.net> SIZE=2000\r\n")
    assert client.line() == b"552 5.3.4 Message too big for system\r\n"
    client.send(TX + b"DATA\r\n")
    assert [client.line()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
    # Too big, then bytes that look like an end and a new transaction.
    client.send(b"x" * 70 + b"\r\n" * 1 + (b"y" * 78 + b"\r\n") * 20 + b"\r\n.\r\n"
                + b"MAIL FROM:<evil@example.net>\r\n")
    assert client.line() == b"552 5.3.4 Message too big for system\r\n"
    assert client.line().startswith(b"250")  # the MAIL after it is a command, in order
    client.send(b"QUIT\r\n")
    assert client.line().startswith(b"221")
    time.sleep(0.2)
    assert proc.queued() == [] and proc.delivered("alice") == []


def test_mail_loop_refused(secure_uvloop):
    proc = secure_uvloop
    client = Raw(proc)
    client.ehlo()
    client.send(TX + b"DATA\r\n")
    assert [client.line()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
    hops = b"".join(b"Received: from hop%d.example by x; Tue, 1 Jan 2026 00:00:00 +0000\r\n" % i
                    for i in range(100))
    client.send(hops + b"Subject: loop\r\n\r\nbody\r\n.\r\n")
    assert client.line() == b"554 5.4.6 Routing loop detected\r\n"
    client.send(TX + b"DATA\r\n")
    assert [client.line()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
    client.send(hops[: 99 * len(hops) // 100] + b"Subject: ok\r\n\r\nbody\r\n.\r\n")
    assert client.line().startswith(b"250 2.0.0")
    proc.wait_delivered("alice")


def test_first_header_line_blank_refused(secure_uvloop):
    client = Raw(secure_uvloop)
    client.ehlo()
    client.send(TX + b"DATA\r\n")
    assert [client.line()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
    client.send(b" folded: start\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
    assert client.line() == b"554 5.6.0 Message is not RFC 5322 compliant\r\n"


def test_bdat_over_a_socket(secure_uvloop):
    proc = secure_uvloop
    client = Raw(proc)
    client.ehlo()
    client.send(TX)
    assert [client.line()[:3] for _ in range(2)] == [b"250", b"250"]
    part1 = b"Subject: chunked\r\n\r\nline one\r\n.dot kept\r\n"
    part2 = b"DATA\r\nQUIT\r\n"   # content, never commands
    client.send(b"BDAT %d\r\n" % len(part1) + part1 + b"BDAT %d LAST\r\n" % len(part2) + part2)
    assert client.line() == b"250 2.0.0 %d octets received\r\n" % len(part1)
    assert client.line().startswith(b"250 2.0.0")
    client.send(b"QUIT\r\n")
    assert client.line().startswith(b"221")
    [path] = proc.wait_delivered("alice")
    raw = path.read_bytes()
    assert b"\n.dot kept\nDATA\nQUIT\n" in raw


def test_aiosmtplib_smtputf8(secure_uvloop):
    proc = secure_uvloop

    async def send() -> None:
        client = aiosmtplib.SMTP(hostname=proc.host, port=proc.ports["plain"], start_tls=False,
                                 timeout=10)
        await client.connect()
        await client.ehlo(hostname="client.example.net")
        assert client.supports_extension("smtputf8") and client.supports_extension("chunking")
        nfd = unicodedata.normalize("NFD", "jörg@bücher.example")
        errors, _ = await client.sendmail(nfd, ["alice@example.test"],
                                          "Subject: Grüße\r\n\r\nBonjour\r\n".encode(),
                                          mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        assert errors == {}
        # Without the parameter a UTF-8 address is refused.
        response = await client.execute_command("MAIL FROM:<jörg@bücher.example>".encode())
        assert (response.code, response.message) == (553, "5.6.7 Non-ASCII address requires SMTPUTF8")
        await client.quit()

    asyncio.run(send())
    [path] = proc.wait_delivered("alice")
    raw = path.read_bytes()
    assert b"with UTF8SMTP id" in raw and "Grüße".encode() in raw
    # NFC local part, A-label domain: one spelling for lookups and the queue.
    assert "Return-Path: <jörg@xn--bcher-kva.example>".encode() in raw


def test_control_bytes_never_inject(secure_uvloop):
    """CR/LF/NUL in HELO, an AUTH name or ENVID never reach a log line or header."""
    proc = secure_uvloop
    client = Raw(proc)
    client.send(b"EHLO evil\rInjected: yes\r\n")
    assert client.line().startswith(b"501 5.5.4")
    client.send(b"EHLO good.example\r\n")
    client.reply()
    client.send(b"MAIL FROM:<bob@example.net> ENVID=a+0D+0AInjected:+20yes\r\n")
    assert client.line() == b"501 5.5.4 Invalid parameter: ENVID\r\n"
    client.close()
    log = proc.wait_log("Invalid parameter: ENVID")
    assert all(not line.startswith("Injected") for line in log.splitlines())
    assert "\\x0d" in log


def test_hostnames_table_names_the_banner(secure_uvloop):
    client = Raw(secure_uvloop, port="named", banner=False)
    assert client.line() == b"220 names.example.test ESMTP Postillion\r\n"
    client.send(b"HELO c.example\r\n")
    assert client.line().startswith(b"250 names.example.test Hello c.example")


def test_inet6_listener(daemon, tmp_path):
    """listen on localhost inet6 binds ::1 only."""
    import dataclasses as dc

    from .inproc import POS, build, start, stop
    from postillion.config.model import ListenDecl
    proc, config = build(daemon, tmp_path)
    port = free_port()
    config = dc.replace(config, listeners=(
        ListenDecl("127.0.0.1", POS, port=daemon.port), ListenDecl("localhost", POS, port=port, family="inet6")))
    start(proc, config)
    try:
        with socket.create_connection(("::1", port), timeout=10) as s:
            assert s.makefile("rb").readline().startswith(b"220 ")
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        stop(proc)


def test_trickled_data_line_times_out(secure_uvloop):
    """Inside DATA too, a line must be complete within command_timeout of its first byte."""
    proc = secure_uvloop
    proc.set_limits(command_timeout=1.0)
    client = Raw(proc)
    client.ehlo()
    client.send(TX + b"DATA\r\n")
    assert [client.line()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
    client.send(b"Subject: complete line\r\n")  # whole lines reset the deadline
    client.sock.settimeout(0.2)
    start, got = time.monotonic(), b""
    for _ in range(40):
        client.send(b"x")
        try:
            got = client.sock.recv(100)
            break
        except (socket.timeout, TimeoutError):
            pass
    assert got == b"421 4.4.2 Timeout\r\n"
    assert 0.9 < time.monotonic() - start < 3.0
    time.sleep(0.2)
    assert proc.queued() == []


@pytest.mark.parametrize("verb", ["DATA", "BDAT"])
def test_trickled_message_times_out_fresh_client_served(secure_uvloop, verb):
    """Whole lines (or chunks) that each beat the line deadline still make a
    message that must come at min_data_rate (default 500 octets/s): the
    client is cut off at command_timeout plus 1 s per 500 octets sent,
    while a fresh client sends a whole message at once."""
    proc = secure_uvloop
    proc.set_limits(command_timeout=1.0)
    slow = Raw(proc)
    slow.ehlo()
    slow.send(TX + (b"DATA\r\n" if verb == "DATA" else b""))
    expected = [b"250", b"250", b"354"] if verb == "DATA" else [b"250", b"250"]
    assert [slow.line()[:3] for _ in expected] == expected
    start, got = time.monotonic(), b""
    for i in range(40):  # 20 octets each 0.15 s: never a line timeout, 133 octets/s
        piece = b"x" * 18 + b"\r\n"
        try:
            slow.send(piece if verb == "DATA" else b"BDAT 20\r\n" + piece)
        except OSError:
            pass  # closed after the 421, which is still to read
        if verb == "BDAT":
            got = slow.line()
            if got != b"250 2.0.0 20 octets received\r\n":
                break
        else:
            slow.sock.settimeout(0.15)
            try:
                got = slow.sock.recv(100)
                break
            except (socket.timeout, TimeoutError):
                pass
        if i == 2:
            fresh = Raw(proc)
            t = time.monotonic()
            fresh.ehlo()
            assert time.monotonic() - t < 0.5
            fresh.send(TX + b"DATA\r\n")
            assert [fresh.line()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
            fresh.send(b"Subject: quick\r\n\r\n" + b"y" * 2000 + b"\r\n.\r\n")
            assert fresh.line().startswith(b"250 2.0.0")
            fresh.close()
        time.sleep(0.15 if verb == "BDAT" else 0)
    assert got == b"421 4.4.2 Timeout\r\n"
    # 1 s + 0.04 s per 20 octets, the whole message counted: about 1.4 s.
    assert 1.0 < time.monotonic() - start < 3.0
    slow.sock.settimeout(10)
    assert slow.closed()
    proc.wait_log("reason=timeout")
    [path] = proc.wait_delivered("alice")  # the fresh client's message only
    assert b"Subject: quick" in path.read_bytes()
    assert proc.queued() == []


def test_invalid_a_labels_refused(secure_uvloop):
    """An xn-- label that is no A-label is a malformed address: 553 5.1.7 at
    MAIL, 501 5.1.3 at RCPT; valid A-labels (IDNA 2003 or 2008) pass."""
    proc = secure_uvloop
    client = Raw(proc)
    client.ehlo()
    client.send(b"MAIL FROM:<bob@xn--->\r\nMAIL FROM:<bob@mx.xn--zz.example>\r\n"
                b"MAIL FROM:<bob@xn--bcher-kva.example>\r\n"
                b"RCPT TO:<alice@xn--zz>\r\nRCPT TO:<alice@xn--abc-.example>\r\n"
                b"RCPT TO:<alice@xn--fa-hia.example>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert [client.line() for _ in range(8)] == [
        b"553 5.1.7 Sender address syntax error\r\n", b"553 5.1.7 Sender address syntax error\r\n",
        b"250 2.0.0 Ok\r\n",
        b"501 5.1.3 Recipient address syntax error\r\n", b"501 5.1.3 Recipient address syntax error\r\n",
        b"550 5.7.1 Invalid recipient: <alice@xn--fa-hia.example>\r\n",  # well-formed; not ours
        b"250 2.1.5 Destination address valid: Recipient ok\r\n",
        b'354 Enter mail, end with "." on a line by itself\r\n']
    client.send(b"Subject: idn\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert client.line().startswith(b"250 2.0.0")
    [path] = proc.wait_delivered("alice")
    assert b"Return-Path: <bob@xn--bcher-kva.example>" in path.read_bytes()
    assert 'command="MAIL FROM:<bob@xn--->"' in proc.wait_log("MAIL FROM:<bob@xn--->")
