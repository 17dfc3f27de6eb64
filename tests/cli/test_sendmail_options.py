"""`sendmail`'s command line and message preparation, without a daemon:
the option sets the usual callers pass, and what is added to a message
(the delivery itself: tests/e2e/test_sendmail.py)."""

from __future__ import annotations

import io
from email.header import decode_header, make_header

import pytest

from postillion.control.sendmail import (UsageError, parse_args, prepare, read_message,
                                         sender_arg)


@pytest.mark.parametrize("argv, extract, dot_ends, sender, fullname, rcpts", [
    # PHP's sendmail_path, with mail()'s additional_params "-fwww@example.org"
    (["-t", "-i", "-fwww@example.org"], True, False, "www@example.org", None, []),
    # git send-email with an envelope sender
    (["-f", "me@example.org", "-i", "a@example.org", "b@example.org"], False, False,
     "me@example.org", None, ["a@example.org", "b@example.org"]),
    # Debian cron, cronie
    (["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"], False, False, None, "CronDaemon", ["root"]),
    (["-FCronDaemon", "-i", "-odi", "-oem", "-oi", "-t", "-f", "root"], True, False, "root",
     "CronDaemon", []),
    # mutt: grouped flags, DSN options, `--`
    (["-oem", "-oi", "-N", "failure,delay", "-R", "hdrs", "-V", "x1", "-v", "--", "-odd@x"],
     False, False, None, None, ["-odd@x"]),
    (["-ti", "-bm", "-F", "Jo Smith"], True, False, None, "Jo Smith", []),
    ([], False, True, None, None, []),
])
def test_the_callers_options(argv, extract, dot_ends, sender, fullname, rcpts):
    opts = parse_args(argv)
    assert (opts.extract, opts.dot_ends, opts.sender, opts.fullname, opts.recipients) == \
        (extract, dot_ends, sender, fullname, rcpts)


@pytest.mark.parametrize("argv, message", [
    (["-x"], "unknown option -x"), (["-q"], "unknown option -q"), (["--verbose"], "--verbose"),
    (["-bs"], "-bs (SMTP on standard input"), (["-oQ/tmp"], "unsupported option -oQ/tmp"),
    (["-f"], "option -f needs a value"),
])
def test_unknown_options_are_refused(argv, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        parse_args(argv)


def test_sender_argument():
    assert [sender_arg(v) for v in (None, "", "<>", "<a@b>", "a@b")] == ["", "<>", "<>", "a@b", "a@b"]


def test_a_lone_dot_ends_the_input_unless_i():
    text = b"a\r\n.\nb\n"
    assert read_message(io.BytesIO(text), dot_ends=True) == [b"a"]
    assert read_message(io.BytesIO(text), dot_ends=False) == [b"a", b".", b"b"]
    with pytest.raises(ValueError, match="longer than 4 octets"):
        read_message(io.BytesIO(b"abc\ndef\n"), dot_ends=False, limit=4)


def test_prepare_adds_what_is_missing_and_drops_bcc():
    lines = [b"To: A <a@example.org>,", b"  b@example.org", b"Bcc: c@example.org",
             b"Subject: hi", b"", b"body", b"Bcc: in the body stays"]
    done = prepare(lines, "u@host.example", "J\u00f6 Smith", "host.example")
    assert done.header_rcpts == ["a@example.org", "b@example.org", "c@example.org"]
    head, body = done.message.split(b"\r\n\r\n", 1)
    assert body == b"body\r\nBcc: in the body stays\r\n"
    fields = head.split(b"\r\n")
    assert fields[:3] == [b"To: A <a@example.org>,", b"  b@example.org", b"Subject: hi"]
    assert fields[3].startswith(b"From: =?utf-8?")        # RFC 2047 for the name
    assert str(make_header(decode_header(fields[3][6:].decode()))) == "J\u00f6 Smith <u@host.example>"
    assert fields[4].startswith(b"Date: ") and fields[5].startswith(b"Message-ID: <")
    assert fields[5].endswith(b"@host.example>")


def test_prepare_keeps_given_fields_and_adds_a_header_to_a_bare_body():
    given = [b"From: x@y", b"Date: Sat, 06 Dec 2026 14:01:02 +0100", b"Message-ID: <1@y>", b"", b"b"]
    assert prepare(given, "u@h", None, "h").message == b"\r\n".join(given) + b"\r\n"
    bare = prepare([b"just a line", b"x: not a header now"], "u@h", None, "h").message
    head, body = bare.split(b"\r\n\r\n", 1)
    assert head.startswith(b"From: u@h\r\nDate: ") and body == b"just a line\r\nx: not a header now\r\n"
