"""Bounces: the DSN policy (NOTIFY, null sender, warn intervals) and the
RFC 3464 notifications themselves, parsed back with Python's `email`."""

from __future__ import annotations

import email
import email.policy
import io
import re
from email.message import EmailMessage
from email.utils import parsedate_to_datetime

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from postillion.queue import bounce
from postillion.queue.bounce import (
    RETURN_WHOLE_MAX,
    build_dsn,
    due_warning,
    wants_dsn,
    warned,
    write_dsn,
)
from postillion.queue.envelope import Envelope
from postillion.queue.returned import (
    HEADER_MAX,
    LINE_MAX,
    quoted_printable,
    read_header,
)

HOST = "mx.example.org"
NOW = 1_800_000_000.0
MSGID = 0x1A2B3C4D
HOUR = 3600.0
HEADER = (b"From: Alice <alice@example.net>\r\nTo: u1@example.org\r\nSubject: hello\r\n"
          b"Message-ID: <1@example.net>\r\n")
MESSAGE = HEADER + b"\r\nHello,\r\n.. a dotted line\r\n\r\nAlice\r\n"


def envelope(n: int = 1, **fields) -> Envelope:
    values = {
        "dispatcher": "relay", "sender": "alice@example.net", "rcpt": f"u{n}@example.org", "dest": f"u{n}@example.org",
        "ctime": NOW - HOUR, "last_try": NOW - 60, "esc_class": 5, "esc_code": "5.1.1",
        "errorline": "550 5.1.1 Invalid recipient",
    }
    values.update(fields)
    return Envelope(id=MSGID << 32 | n, msgid=MSGID, **values)


def dsn(kind, envelopes, message: bytes = MESSAGE, **kw) -> bytes:
    return build_dsn(kind, envelopes, io.BytesIO(message), hostname=HOST, now=NOW, **kw)


def check_wire(data: bytes) -> None:
    """CRLF line ends only, no line over 998 octets."""
    bare = data.replace(b"\r\n", b"")
    assert b"\r" not in bare and b"\n" not in bare
    assert data.endswith(b"\r\n")
    assert max(len(line) for line in data.split(b"\r\n")) <= LINE_MAX


class Parsed:
    """A DSN parsed with `email`, checked for the RFC 3464 shape."""

    def __init__(self, data: bytes) -> None:
        check_wire(data)
        self.data = data
        self.msg: EmailMessage = email.message_from_bytes(data, policy=email.policy.default)
        assert not self.msg.defects
        assert self.msg.get_content_type() == "multipart/report"
        assert self.msg.get_param("report-type") == "delivery-status"
        self.parts = list(self.msg.iter_parts())
        assert len(self.parts) == 3
        text, status, self.returned = self.parts
        assert text.get_content_type() == "text/plain"
        self.text = text.get_content()
        self.words = " ".join(self.text.split())  # the text unwrapped
        assert status.get_content_type() == "message/delivery-status"
        blocks = status.get_payload()
        self.per_message = dict(blocks[0])
        self.recipients = [dict(block) for block in blocks[1:]]
        boundary = self.msg.get_param("boundary").encode()
        pieces = data.split(b"\r\n--" + boundary)
        assert len(pieces) == 5 and pieces[-1] == b"--\r\n"  # preamble, 3 parts, close
        head, _, self.raw_returned = pieces[3][2:].partition(b"\r\n\r\n")
        self.returned_headers = head.decode("ascii")


# -- policy -----------------------------------------------------------------------


@pytest.mark.parametrize(("notify", "expected"), [
    ((), {"failed": True, "delayed": True, "delivered": False, "relayed": False}),
    (("NEVER",), {"failed": False, "delayed": False, "delivered": False, "relayed": False}),
    (("SUCCESS",), {"failed": False, "delayed": False, "delivered": True, "relayed": True}),
    (("FAILURE",), {"failed": True, "delayed": False, "delivered": False, "relayed": False}),
    (("DELAY",), {"failed": False, "delayed": True, "delivered": False, "relayed": False}),
    (("SUCCESS", "FAILURE", "DELAY"), {"failed": True, "delayed": True, "delivered": True, "relayed": True}),
], ids=lambda v: ",".join(v) if isinstance(v, tuple) else None)
def test_notify_decides_which_dsn_goes(notify, expected):
    e = envelope(dsn_notify=frozenset(notify))
    assert {kind: wants_dsn(e, kind) for kind in bounce.KINDS} == expected


@pytest.mark.parametrize("kind", bounce.KINDS)
def test_never_a_dsn_to_the_null_sender_or_about_a_bounce(kind):
    everything = frozenset({"SUCCESS", "FAILURE", "DELAY"})
    assert not wants_dsn(envelope(sender="", dsn_notify=everything), kind)
    assert not wants_dsn(envelope(flags=frozenset({"bounce"}), dsn_notify=everything), kind)
    assert not wants_dsn(envelope(type="bounce", dsn_notify=everything), kind)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError):
        wants_dsn(envelope(), "bounced")


def test_a_warn_interval_is_due_once_it_passes_before_the_next_attempt():
    e = envelope(ctime=NOW, esc_class=4, esc_code="4.2.0")
    assert due_warning(e, NOW + 3 * HOUR, (4 * HOUR,)) is None
    assert due_warning(e, NOW + 4 * HOUR, (4 * HOUR,)) == 4 * HOUR
    reported = warned(e, 4 * HOUR, NOW + 3.5 * HOUR)
    assert (reported.bounce_delay, reported.last_bounce) == (4 * HOUR, NOW + 3.5 * HOUR)
    assert due_warning(reported, NOW + 9 * HOUR, (4 * HOUR,)) is None


def test_warn_intervals_due_together_make_one_dsn_and_later_ones_still_come():
    intervals = (1 * HOUR, 4 * HOUR, 24 * HOUR)
    e = envelope(ctime=NOW, esc_class=4, esc_code="4.2.0")
    assert due_warning(e, NOW + 5 * HOUR, intervals) == 4 * HOUR
    e = warned(e, 4 * HOUR, NOW + 5 * HOUR)
    assert due_warning(e, NOW + 6 * HOUR, intervals) is None  # 1 h is behind us, not reported apart
    assert due_warning(e, NOW + 25 * HOUR, intervals) == 24 * HOUR


def test_no_warning_when_delays_are_not_wanted_or_the_envelope_expires_first():
    assert due_warning(envelope(ctime=NOW, dsn_notify=frozenset({"FAILURE"})), NOW + 5 * HOUR, (HOUR,)) is None
    assert due_warning(envelope(ctime=NOW, sender=""), NOW + 5 * HOUR, (HOUR,)) is None
    short = envelope(ctime=NOW, ttl=2 * HOUR)
    assert due_warning(short, NOW + 2 * HOUR, (2 * HOUR, 3 * HOUR)) is None
    assert due_warning(envelope(ctime=NOW, dsn_notify=frozenset({"DELAY"})), NOW + 2 * HOUR, (HOUR,)) == HOUR


# -- the DSN ----------------------------------------------------------------------


def test_a_failed_dsn_has_the_rfc3464_shape():
    e = envelope()
    p = Parsed(dsn("failed", [e], remote_mta={e.id: "mx1.example.org"}))
    m = p.msg
    assert m["From"] == f"Mailer Daemon <MAILER-DAEMON@{HOST}>"
    assert m["To"] == "alice@example.net"
    assert m["Subject"] == "Delivery status notification: failed"
    assert m["Auto-Submitted"] == "auto-replied"
    assert m["MIME-Version"] == "1.0"
    assert parsedate_to_datetime(m["Date"]).timestamp() == NOW
    assert re.fullmatch(rf"<[0-9a-f]{{16}}@{re.escape(HOST)}>", m["Message-ID"])
    assert "u1@example.org: 550 5.1.1 Invalid recipient" in p.text
    assert p.per_message["Reporting-MTA"] == f"dns; {HOST}"
    assert p.per_message["X-Postillion-Queue-ID"] == "1a2b3c4d"
    assert parsedate_to_datetime(p.per_message["Arrival-Date"]).timestamp() == NOW - HOUR
    assert "Original-Envelope-Id" not in p.per_message
    [r] = p.recipients
    assert r["Final-Recipient"] == "rfc822;u1@example.org"
    assert r["Action"] == "failed"
    assert r["Status"] == "5.1.1"
    assert r["Remote-MTA"] == "dns; mx1.example.org"
    assert r["Diagnostic-Code"] == "smtp; 550 5.1.1 Invalid recipient"
    assert parsedate_to_datetime(r["Last-Attempt-Date"]).timestamp() == NOW - 60
    assert "Original-Recipient" not in r and "Will-Retry-Until" not in r
    # the original message comes back whole and byte for byte
    assert p.returned.get_content_type() == "message/rfc822"
    assert "Content-Transfer-Encoding: 7bit" in p.returned_headers
    assert p.raw_returned == MESSAGE
    assert p.returned.get_payload()[0]["Subject"] == "hello"


def test_one_block_per_recipient_each_with_its_own_outcome():
    envelopes = [
        envelope(1),
        envelope(2, esc_code="5.2.2", errorline="552 5.2.2 Mailbox full"),
        envelope(3, esc_class=4, esc_code="4.4.7", errorline="421 4.4.7 Envelope expired"),
    ]
    p = Parsed(dsn("failed", envelopes, remote_mta={envelopes[1].id: "[192.0.2.1]"}))
    assert [r["Final-Recipient"] for r in p.recipients] == [f"rfc822;u{n}@example.org" for n in (1, 2, 3)]
    assert [r["Status"] for r in p.recipients] == ["5.1.1", "5.2.2", "4.4.7"]
    assert [r["Action"] for r in p.recipients] == ["failed"] * 3
    assert [r.get("Remote-MTA") for r in p.recipients] == [None, "dns; [192.0.2.1]", None]
    for n, text in ((1, "550 5.1.1 Invalid recipient"), (2, "552 5.2.2 Mailbox full"), (3, "421 4.4.7")):
        assert f"u{n}@example.org: {text}" in p.text


def test_an_outcome_without_a_code_gets_the_generic_status_and_no_diagnostic():
    p = Parsed(dsn("failed", [envelope(esc_class=0, esc_code="", errorline="")]))
    [r] = p.recipients
    assert r["Status"] == "5.0.0" and "Diagnostic-Code" not in r
    assert "u1@example.org: delivery failed" in p.text


def test_a_diagnostic_that_is_not_an_smtp_reply_is_typed_as_ours():
    p = Parsed(dsn("failed", [envelope(errorline="mailbox quota exceeded")]))
    assert p.recipients[0]["Diagnostic-Code"] == "X-Postillion; mailbox quota exceeded"


def test_envid_and_orcpt_are_reported():
    e = envelope(dsn_envid="QQ314159", dsn_orcpt="rfc822;U1@Example.ORG", rcpt="alias@example.org")
    p = Parsed(dsn("failed", [e]))
    assert p.per_message["Original-Envelope-Id"] == "QQ314159"
    [r] = p.recipients
    assert r["Original-Recipient"] == "rfc822;U1@Example.ORG"
    assert r["Final-Recipient"] == "rfc822;u1@example.org"
    assert "u1@example.org (expanded from alias@example.org): 550" in p.text


def test_a_local_destination_without_domain_reports_the_recipient():
    p = Parsed(dsn("failed", [envelope(rcpt="bob@example.org", dest="bob")]))
    assert p.recipients[0]["Final-Recipient"] == "rfc822;bob@example.org"


def test_ret_hdrs_returns_the_header_only():
    p = Parsed(dsn("failed", [envelope(dsn_ret="HDRS")]))
    assert p.returned.get_content_type() == "text/rfc822-headers"
    assert p.raw_returned == HEADER
    assert "The header of your message is attached" in p.text


def big_message(size: int) -> bytes:
    line = b"x" * 98 + b"\r\n"
    body = line * ((size - len(HEADER) - 2) // len(line) + 1)
    return (HEADER + b"\r\n" + body)[:size - 2] + b"\r\n"


def test_a_failure_returns_the_message_up_to_one_mib_then_the_header():
    at_limit = big_message(RETURN_WHOLE_MAX)
    assert len(at_limit) == RETURN_WHOLE_MAX
    p = Parsed(dsn("failed", [envelope()], at_limit))
    assert p.returned.get_content_type() == "message/rfc822" and p.raw_returned == at_limit
    over = big_message(RETURN_WHOLE_MAX + 1)
    p = Parsed(dsn("failed", [envelope()], over))
    assert p.returned.get_content_type() == "text/rfc822-headers" and p.raw_returned == HEADER
    assert "larger than 1 MiB" in p.words


def test_ret_full_returns_a_message_over_one_mib_whole():
    over = big_message(RETURN_WHOLE_MAX + 1)
    p = Parsed(dsn("failed", [envelope(dsn_ret="FULL")], over))
    assert p.returned.get_content_type() == "message/rfc822" and p.raw_returned == over


def test_a_delay_reports_the_header_and_until_when_it_is_retried():
    e = envelope(ctime=NOW - 4 * HOUR, esc_class=4, esc_code="4.2.0", errorline="451 4.2.0 Mailbox busy",
                 dsn_ret="FULL")
    p = Parsed(dsn("delayed", [e]))
    assert p.msg["Subject"] == "Delivery status notification: delayed"
    [r] = p.recipients
    assert (r["Action"], r["Status"]) == ("delayed", "4.2.0")
    assert r["Diagnostic-Code"] == "smtp; 451 4.2.0 Mailbox busy"
    assert parsedate_to_datetime(r["Will-Retry-Until"]).timestamp() == e.expires
    assert p.returned.get_content_type() == "text/rfc822-headers" and p.raw_returned == HEADER
    assert "4 hours after it arrived" in p.words


@pytest.mark.parametrize("kind", ["delivered", "relayed"])
def test_a_success_dsn_needs_notify_success_and_forgets_earlier_errors(kind):
    # delivered after a temporary failure: the envelope still holds the 4xx
    e = envelope(dsn_notify=frozenset({"SUCCESS"}), esc_class=4, esc_code="4.2.0", errorline="451 4.2.0 busy")
    p = Parsed(dsn(kind, [e]))
    assert p.msg["Subject"] == f"Delivery status notification: {kind}"
    [r] = p.recipients
    assert (r["Action"], r["Status"]) == (kind, "2.0.0")
    assert "Diagnostic-Code" not in r and "busy" not in p.text
    assert p.returned.get_content_type() == "text/rfc822-headers"
    ok = envelope(dsn_notify=frozenset({"SUCCESS"}), esc_class=2, esc_code="2.0.0", errorline="250 2.0.0 Ok")
    assert Parsed(dsn(kind, [ok])).recipients[0]["Diagnostic-Code"] == "smtp; 250 2.0.0 Ok"
    with pytest.raises(ValueError):
        dsn(kind, [envelope()])  # no NOTIFY=SUCCESS


@pytest.mark.parametrize("fields", [
    {"sender": ""}, {"flags": frozenset({"bounce"})}, {"dsn_notify": frozenset({"NEVER"})},
    {"dsn_notify": frozenset({"SUCCESS", "DELAY"})},
], ids=["null-sender", "bounce", "never", "no-failure"])
def test_the_builder_refuses_what_the_policy_refuses(fields):
    with pytest.raises(ValueError):
        dsn("failed", [envelope(**fields)])


def test_the_builder_refuses_a_mixed_group_an_empty_one_and_a_bad_hostname():
    with pytest.raises(ValueError):
        dsn("failed", [envelope(1), envelope(2, sender="carol@example.net")])
    other = Envelope(id=(MSGID + 1) << 32 | 1, msgid=MSGID + 1, dispatcher="relay", sender="alice@example.net",
                     rcpt="x@example.org", dest="x@example.org")
    with pytest.raises(ValueError):
        dsn("failed", [envelope(1), other])
    with pytest.raises(ValueError):
        dsn("failed", [])
    with pytest.raises(ValueError):
        build_dsn("failed", [envelope()], io.BytesIO(MESSAGE), hostname="mx\r\nBcc: x", now=NOW)


def test_8bit_body_goes_8bit_never_base64():
    message = HEADER + b"\r\nGr\xc3\xbc\xc3\x9fe, \xe9t\xe9 latin-1 too\r\n"
    data = dsn("failed", [envelope()], message)
    p = Parsed(data)
    assert p.msg["Content-Transfer-Encoding"] == "8bit"
    assert p.returned.get_content_type() == "message/rfc822"
    assert "Content-Transfer-Encoding: 8bit" in p.returned_headers
    assert p.raw_returned == message
    info = write_dsn(io.BytesIO().write, "failed", [envelope()], io.BytesIO(message), hostname=HOST, now=NOW)
    assert info.eightbit and not info.smtputf8 and info.returned == "message"


def test_a_utf8_header_is_returned_as_message_global():
    message = "Subject: Grüße\r\nFrom: jörg@exämple.net\r\n\r\nHallo\r\n".encode()
    p = Parsed(dsn("failed", [envelope()], message))
    assert p.returned.get_content_type() == "message/global"
    assert p.raw_returned == message
    p = Parsed(dsn("delayed", [envelope(esc_class=4, esc_code="4.2.0")], message))
    assert p.returned.get_content_type() == "message/global-headers"
    assert p.raw_returned == message.split(b"\r\n\r\n")[0] + b"\r\n"


def test_a_header_that_cannot_travel_as_it_is_goes_quoted_printable():
    header = b"Subject: caf\xe9 " + b"y" * 1200 + b"\r\nX-Bare: a\nb\r\nX-Nul: \x00\r\n"
    message = header + b"\r\nbody\r\n"
    p = Parsed(dsn("failed", [envelope()], message))
    assert p.returned.get_content_type() == "text/rfc822-headers"
    assert "Content-Transfer-Encoding: quoted-printable" in p.returned_headers
    assert p.returned.get_payload(decode=True) == header
    assert "not UTF-8" in p.words or "malformed" in p.words


def test_a_message_with_long_lines_is_not_returned_whole():
    message = HEADER + b"\r\n" + b"z" * 5000 + b"\r\n"
    p = Parsed(dsn("failed", [envelope()], message))
    assert p.returned.get_content_type() == "text/rfc822-headers" and p.raw_returned == HEADER
    assert "lines too long" in p.words


def test_a_huge_header_is_cut_at_a_line_and_never_returned_whole():
    line = b"Received: from somewhere by somewhere else\r\n"
    header = line * (HEADER_MAX // len(line) + 10)
    p = Parsed(dsn("failed", [envelope()], header + b"\r\nbody\r\n"))
    assert p.returned.get_content_type() == "text/rfc822-headers"
    assert len(p.raw_returned) <= HEADER_MAX and p.raw_returned.endswith(line)
    assert header.startswith(p.raw_returned)
    assert "header is too long" in p.words


@pytest.mark.parametrize(("message", "header"), [
    (b"", b""),
    (b"\r\nbody only\r\n", b""),
    (b"Subject: no body\r\n", b"Subject: no body\r\n"),
    (b"Subject: no end of line", b"Subject: no end of line\r\n"),
    (b"Subject: x\r\n\r\n", b"Subject: x\r\n"),
])
def test_read_header_edge_cases(message, header):
    assert read_header(io.BytesIO(message)) == (header, True)
    Parsed(dsn("failed", [envelope()], message))
    Parsed(dsn("delayed", [envelope(esc_class=4, esc_code="4.0.0")], message))


def test_the_original_is_read_from_its_start():
    original = io.BytesIO(MESSAGE)
    original.seek(0, io.SEEK_END)
    data = build_dsn("failed", [envelope()], original, hostname=HOST, now=NOW)
    assert Parsed(data).raw_returned == MESSAGE


def test_utf8_addresses():
    sender, rcpt = "jörg@exämple.net", "ünïcode@exämple.org"
    e = envelope(sender=sender, rcpt=rcpt, dest=rcpt, flags=frozenset({"smtputf8"}))
    out = io.BytesIO()
    info = write_dsn(out.write, "failed", [e], io.BytesIO(MESSAGE), hostname=HOST, now=NOW)
    p = Parsed(out.getvalue())
    assert info.smtputf8 and info.to == sender
    assert p.msg["To"] == sender
    final = p.recipients[0]["Final-Recipient"]
    assert final.isascii() and final.startswith("utf-8;")
    decoded = re.sub(r"\\x\{([0-9A-F]+)\}", lambda m: chr(int(m.group(1), 16)), final[len("utf-8;"):])
    assert decoded == rcpt
    assert f"{rcpt}: 550 5.1.1" in p.text
    assert "quoted-printable" in p.parts[0]["Content-Transfer-Encoding"]
    assert out.getvalue().split(b"\r\n\r\n")[0].count(sender.encode()) == 1  # only To: is UTF-8


def test_hostile_diagnostics_are_cut_to_printable_folded_lines():
    nasty = "550 5.7.1 " + "\x1b[31mred\x07 ünïcödé " + "w" * 3000 + " \u202e" + " word" * 400
    p = Parsed(dsn("failed", [envelope(errorline=nasty)]))
    code = p.recipients[0]["Diagnostic-Code"]
    assert code.isascii() and code.startswith("smtp; 550 5.7.1 ?[31mred? ?n?c?d? www")
    assert "\x1b" not in p.text and "ünïcödé" in p.text


def test_write_dsn_streams_and_reports_what_it_wrote():
    pieces: list[bytes] = []
    info = write_dsn(pieces.append, "failed", [envelope()], io.BytesIO(MESSAGE), hostname=HOST, now=NOW)
    data = b"".join(pieces)
    assert len(pieces) > 3 and info.size == len(data)
    p = Parsed(data)
    assert info.message_id == p.msg["Message-ID"]
    assert (info.kind, info.to, info.eightbit, info.smtputf8) == ("failed", "alice@example.net", False, False)


def test_a_boundary_found_in_the_message_is_replaced(monkeypatch):
    taken = "0" * 32
    message = HEADER + f"\r\n--postillion-{taken}\r\n".encode()
    tokens = iter([taken, "1" * 32])
    real = bounce.secrets.token_hex
    monkeypatch.setattr(bounce.secrets, "token_hex", lambda n: next(tokens) if n == 16 else real(n))
    p = Parsed(dsn("failed", [envelope()], message))
    assert p.msg.get_param("boundary") == "postillion-" + "1" * 32
    assert p.raw_returned == message


def test_quoted_printable_round_trips():
    import quopri

    data = b"a=b \t\r\n\x00\xff" + b"q" * 200 + b" \r\nlast"
    encoded = quoted_printable(data)
    assert max(len(line) for line in encoded.split(b"\r\n")) <= 76
    assert quopri.decodestring(encoded.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n") == data


# -- property: whatever goes in, a valid DSN comes out ------------------------------

_line_text = st.text(st.characters(exclude_characters="\r\n\x00"), max_size=300)
_address = st.builds(lambda local, domain: f"{local}@{domain}",
                     st.text(st.characters(exclude_characters="\r\n\x00 "), min_size=1, max_size=64),
                     st.text(st.characters(exclude_characters="\r\n\x00 "), min_size=1, max_size=64))
_message = st.one_of(
    st.binary(max_size=3000),
    st.lists(st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), max_size=20)
    .map(lambda lines: b"\r\n".join(lines)),
)


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(bounce.KINDS),
    sender=_address,
    rcpts=st.lists(st.tuples(_address, _line_text, st.sampled_from(["", "5.1.1", "4.4.7", "2.0.0", "9.9"])),
                   min_size=1, max_size=4),
    ret=st.sampled_from(["", "FULL", "HDRS"]),
    envid=_line_text,
    orcpt=st.one_of(st.just(""), _line_text.map(lambda s: "rfc822;" + s)),
    mta=_line_text,
    message=_message,
)
@example(kind="failed", sender="a@b", rcpts=[("c@d", "x" * 300, "5.1.1")], ret="", envid="", orcpt="", mta="",
         message=b"Subject: " + b"y" * 2000 + b"\r\n\r\n\xff")
def test_any_input_gives_a_parseable_crlf_dsn(kind, sender, rcpts, ret, envid, orcpt, mta, message):
    notify = frozenset({"SUCCESS", "FAILURE", "DELAY"})
    envelopes = []
    for n, (rcpt, errorline, code) in enumerate(rcpts, 1):
        esc_class = int(code[0]) if code[:1] in ("2", "4", "5") else 0
        envelopes.append(envelope(n, sender=sender, rcpt=rcpt, dest=rcpt, errorline=errorline, esc_code=code,
                                  esc_class=esc_class, dsn_ret=ret, dsn_envid=envid, dsn_orcpt=orcpt,
                                  dsn_notify=notify))
    data = dsn(kind, envelopes, message, remote_mta={envelopes[0].id: mta})
    p = Parsed(data)
    assert len(p.recipients) == len(envelopes)
    assert all(r["Action"] == kind for r in p.recipients)
    assert all(re.fullmatch(r"[245]\.\d+\.\d+", r["Status"]) for r in p.recipients)
    ctype = p.returned.get_content_type()
    if ctype in ("message/rfc822", "message/global"):
        assert kind == "failed" and ret != "HDRS" and p.raw_returned == message
    else:
        header = read_header(io.BytesIO(message))[0]
        if "quoted-printable" in p.returned_headers:
            assert p.returned.get_payload(decode=True) == header
        else:
            assert p.raw_returned == header


def test_the_longest_addresses_are_never_split():
    local = "l" * 64
    domain = ".".join(["d" * 62] * 3) + ".example"  # 197 octets: a 262-octet address
    sender, rcpt = f"{local}@{domain}", f"{local}@x{domain}"
    p = Parsed(dsn("failed", [envelope(sender=sender, rcpt=rcpt, dest=rcpt)]))
    assert p.msg["To"] == sender
    assert p.recipients[0]["Final-Recipient"] == f"rfc822;{rcpt}"
    utf8 = "ü" * 120 + "@exämple.org"
    p = Parsed(dsn("failed", [envelope(rcpt=utf8, dest=utf8)]))
    assert " " not in p.recipients[0]["Final-Recipient"]
