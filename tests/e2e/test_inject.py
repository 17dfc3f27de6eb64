"""Local injection: a message queued through a session with ourselves goes
where any local mail to that address goes (rules, expansion, Received:,
the durable commit), and a refusal comes back as the session's reply."""

from __future__ import annotations

from postillion.smtp.inject import _stuffed, inject

from .inproc import secure_uvloop  # noqa: F401 (fixture)


def test_stuffing_doubles_leading_dots_and_ends_lines_with_crlf():
    body = b"Subject: x\n\n.hidden\r\nline\n..two\n"
    assert b"".join(_stuffed(body)) == b"Subject: x\r\n\r\n..hidden\r\nline\r\n...two\r\n"


def test_stuffing_pieces_a_large_message():
    body = b"x" * 70 + b"\n"
    pieces = _stuffed(body * 5000)
    assert len(pieces) > 1 and b"".join(pieces) == (b"x" * 70 + b"\r\n") * 5000


def test_injected_message_is_delivered_like_local_mail(secure_uvloop):
    proc = secure_uvloop
    message = b"From: MAILER-DAEMON@x\r\nSubject: injected\r\n\r\n.a dotted line\r\nbody\r\n"
    result = proc.run(inject(proc.daemon.local_ctx, "", ["alice@example.test"], message))
    assert result.queued, result
    assert [r.code for r in result.rcpt_replies] == [250]
    [path] = proc.fixture.wait_delivered("alice")
    data = path.read_bytes()
    assert b"Subject: injected" in data and b"\n.a dotted line\n" in data   # Maildir keeps LF line ends
    assert b"Received: from localhost" in data
    assert b"Return-Path: <>" in data
    proc.wait_log("smtp connected address=local")


def test_injection_to_an_unknown_user_is_refused_at_rcpt(secure_uvloop):
    proc = secure_uvloop
    result = proc.run(inject(proc.daemon.local_ctx, "", ["nobody-here@example.test"],
                             b"Subject: x\r\n\r\nx\r\n"))
    assert not result.queued and result.final is None
    [reply] = result.rcpt_replies
    assert reply.code == 550 and reply.enhanced == "5.1.1"
