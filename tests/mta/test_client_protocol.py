"""The SMTP/LMTP client machine alone: bytes in, events and bytes out.

Reply cases come from one table and are fed whole, byte by byte and with
trailing bytes (h11's habit); properties: any bytes from a peer give
events or PeerProtocolError, the stuffer's output does not depend on how
the message was cut, xtext round-trips through the server's decoder.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from postillion.errors import Reply
from postillion.mta.protocol import (
    NEED_DATA,
    ClientLimits,
    ClientProtocol,
    Command,
    DataStuffer,
    Extensions,
    Outcome,
    PeerClosed,
    PeerProtocolError,
    Recipient,
    Replied,
    ReplyReader,
    SendBody,
    Transaction,
    TransactionDone,
    UsageError,
    xtext,
)
from postillion.queue.envelope import Envelope
from postillion.smtp._syntax import _xtext

LIMITS = ClientLimits()


# -- replies ------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    wire: bytes
    reply: Reply | None = None      # expected reply
    error: str = ""                 # expected PeerProtocolError text (part)


LONGEST = b"250 " + b"x" * (512 - 6) + b"\r\n"          # exactly 512 octets
CASES = [
    Case("one line", b"250 ok\r\n", Reply(250, "", "ok")),
    Case("bare code", b"250\r\n", Reply(250, "", "")),
    Case("bare LF", b"220 mx ready\n", Reply(220, "", "mx ready")),
    Case("multi-line", b"250-mx\r\n250-PIPELINING\r\n250 SIZE 10\r\n",
         Reply(250, "", "mx", ("PIPELINING", "SIZE 10"))),
    Case("enhanced", b"550 5.1.1 no such user\r\n", Reply(550, "5.1.1", "no such user")),
    Case("enhanced repeated", b"550-5.7.1 first\r\n550 5.7.1 second\r\n",
         Reply(550, "5.7.1", "first", ("second",))),
    Case("enhanced of another class is text", b"250 5.1.1 odd\r\n", Reply(250, "", "5.1.1 odd")),
    Case("controls blanked", b"250 a\x00b\x1bc\r\n", Reply(250, "", "a b c")),
    Case("not UTF-8", b"250 caf\xe9\r\n", Reply(250, "", "caf\ufffd")),
    Case("512 octets", LONGEST, Reply(250, "", "x" * 506)),
    Case("513 octets", b"250 " + b"x" * 507 + b"\r\n", error="longer than 512"),
    Case("1000 lines", b"250-x\r\n" * 999 + b"250 end\r\n",
         Reply(250, "", "x", ("x",) * 998 + ("end",))),
    Case("1001 lines", b"250-x\r\n" * 1000 + b"250 end\r\n", error="more than 1000 lines"),
    Case("mixed codes", b"250-a\r\n251 b\r\n", error="mixed reply codes"),
    Case("garbage", b"hello there\r\n", error="not a reply line"),
    Case("two digits", b"25 ok\r\n", error="not a reply line"),
    Case("four digits", b"2500 ok\r\n", error="not a reply line"),
    Case("no separator", b"250ok\r\n", error="not a reply line"),
    Case("1xx", b"199 ok\r\n", error="not a reply line"),
    Case("6xx", b"600 ok\r\n", error="not a reply line"),
    Case("empty line", b"\r\n", error="not a reply line"),
]


def whole(reader: ReplyReader, wire: bytes) -> Reply | None:
    reader.feed(wire)
    return reader.next_reply()


def bytewise(reader: ReplyReader, wire: bytes) -> Reply | None:
    for i in range(len(wire)):
        reader.feed(wire[i:i + 1])
        reply = reader.next_reply()
        if reply is not None:
            assert i == len(wire) - 1, "a reply before its last byte"
            return reply
    return None


def with_trailing(reader: ReplyReader, wire: bytes) -> Reply | None:
    reader.feed(wire + b"250 next\r\n")
    reply = reader.next_reply()
    assert reader.next_reply() == Reply(250, "", "next")
    return reply


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("feed", [whole, bytewise, with_trailing])
def test_reply_case(case: Case, feed) -> None:
    reader = ReplyReader(LIMITS)
    if case.error:
        with pytest.raises(PeerProtocolError, match=case.error):
            feed(reader, case.wire)
    else:
        assert feed(reader, case.wire) == case.reply


def test_long_line_refused_before_its_end() -> None:
    """A 10 MB line is refused at the first read past 512 octets, not held."""
    reader = ReplyReader(LIMITS)
    reader.feed(b"220 " + b"x" * 600)
    with pytest.raises(PeerProtocolError, match="longer than 512"):
        reader.next_reply()


def test_limits_are_settings() -> None:
    reader = ReplyReader(ClientLimits(max_reply_line=20, max_reply_lines=2))
    reader.feed(b"250-a\r\n250-b\r\n250 c\r\n")
    with pytest.raises(PeerProtocolError, match="more than 2 lines"):
        reader.next_reply()


reply_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)


@given(code=st.integers(200, 599), text=reply_text, lines=st.lists(reply_text, max_size=5),
       enhanced=st.booleans())
def test_reply_round_trip(code: int, text: str, lines: list[str], enhanced: bool) -> None:
    """What our server's Reply.to_bytes writes, the client reads back."""
    esc = f"{code // 100}.1.2" if enhanced and code // 100 != 3 else ""
    if re.match(r"[245]\.\d", text):
        text = "x" + text
    sent = Reply(code, esc, text, tuple(lines))
    reader = ReplyReader(LIMITS)
    reader.feed(sent.to_bytes())
    got = reader.next_reply()
    assert got is not None and (got.code, got.enhanced, got.text) == (code, esc, text)
    assert len(got.lines) == len(lines)


# -- EHLO keywords ------------------------------------------------------------

def test_extensions_parse() -> None:
    reply = Reply(250, "", "mx.example", ("PIPELINING", "SIZE 35651584", "DSN", "STARTTLS",
                                          "AUTH PLAIN LOGIN", "8BITMIME", "SMTPUTF8",
                                          "ENHANCEDSTATUSCODES", "CHUNKING", "HELP"))
    assert Extensions.parse(reply) == Extensions(
        pipelining=True, size=35651584, dsn=True, starttls=True, auth=frozenset({"PLAIN", "LOGIN"}),
        eightbitmime=True, smtputf8=True, enhancedstatuscodes=True)


@pytest.mark.parametrize("line, size", [("SIZE", 0), ("SIZE 0", 0), ("SIZE abc", None),
                                        ("SIZE -5", None), ("size 10", 10)])
def test_extensions_size(line: str, size: int | None) -> None:
    assert Extensions.parse(Reply(250, "", "mx", (line,))).size == size


def test_extensions_old_auth_syntax_and_first_line_ignored() -> None:
    ext = Extensions.parse(Reply(250, "", "PIPELINING", ("AUTH=LOGIN", "auth cram-md5 plain")))
    assert ext.auth == {"LOGIN", "CRAM-MD5", "PLAIN"} and not ext.pipelining


# -- driving the machine ------------------------------------------------------

ALL = ("PIPELINING", "SIZE 1000", "DSN", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES")


def ehlo(*keywords: str) -> bytes:
    lines = ["mx.example", *keywords]
    return "".join(f"250{'-' if i < len(lines) - 1 else ' '}{line}\r\n"
                   for i, line in enumerate(lines)).encode()


def greeted(*keywords: str, lmtp: bool = False, limits: ClientLimits = LIMITS) -> ClientProtocol:
    proto = ClientProtocol(lmtp=lmtp, limits=limits)
    proto.receive_data(b"220 mx.example ESMTP\r\n")
    assert proto.next_event() == Replied(Command.GREETING, Reply(220, "", "mx.example ESMTP"))
    proto.hello("client.example")
    assert proto.data_to_send() == (b"LHLO" if lmtp else b"EHLO") + b" client.example\r\n"
    proto.receive_data(ehlo(*keywords))
    event = proto.next_event()
    assert isinstance(event, Replied) and event.reply.code == 250
    return proto


def feed(proto: ClientProtocol, wire: bytes):
    proto.receive_data(wire)
    return proto.next_event()


def outcomes(event) -> list[tuple[str, Outcome, int]]:
    assert isinstance(event, TransactionDone), event
    return [(r.recipient.address, r.outcome, r.reply.code) for r in event.result.recipients]


def tx(*rcpts: str, sender: str = "a@example.org", **kw) -> Transaction:
    return Transaction(sender, tuple(Recipient(r) for r in rcpts), **kw)


def test_pipelined_group_in_one_write() -> None:
    proto = greeted(*ALL)
    proto.begin(tx("x@example.com", "y@example.com", size=10))
    assert proto.data_to_send() == (b"MAIL FROM:<a@example.org> SIZE=10\r\n"
                                    b"RCPT TO:<x@example.com>\r\nRCPT TO:<y@example.com>\r\nDATA\r\n")


def test_unpipelined_one_command_at_a_time() -> None:
    proto = greeted("SIZE 1000")
    proto.begin(tx("x@example.com", "y@example.com"))
    assert proto.data_to_send() == b"MAIL FROM:<a@example.org>\r\n"
    assert feed(proto, b"250 ok\r\n") is NEED_DATA
    assert proto.data_to_send() == b"RCPT TO:<x@example.com>\r\n"
    assert feed(proto, b"550 5.1.1 unknown\r\n") is NEED_DATA
    assert proto.data_to_send() == b"RCPT TO:<y@example.com>\r\n"
    assert feed(proto, b"250 ok\r\n") is NEED_DATA
    assert proto.data_to_send() == b"DATA\r\n"
    assert feed(proto, b"354 go\r\n") == SendBody()
    assert proto.send_data(b"hi\r\n") + proto.end_data() == b"hi\r\n.\r\n"
    assert outcomes(feed(proto, b"250 2.0.0 queued\r\n")) == [
        ("x@example.com", Outcome.PERMFAIL, 550), ("y@example.com", Outcome.OK, 250)]


def test_each_rcpt_reply_maps_to_its_recipient() -> None:
    proto = greeted(*ALL)
    proto.begin(tx("a@x", "b@x", "c@x", "d@x"))
    proto.data_to_send()
    event = feed(proto, b"250 ok\r\n250 ok\r\n550 5.1.1 no b\r\n452 4.2.2 c full\r\n250 ok\r\n354 go\r\n")
    assert event == SendBody()
    proto.send_data(b"x")
    proto.end_data()
    result = feed(proto, b"250 2.0.0 done\r\n")
    assert outcomes(result) == [("a@x", Outcome.OK, 250), ("b@x", Outcome.PERMFAIL, 550),
                                ("c@x", Outcome.TEMPFAIL, 452), ("d@x", Outcome.OK, 250)]
    assert result.result.recipients[1].reply == Reply(550, "5.1.1", "no b")


@pytest.mark.parametrize("code, outcome", [(550, Outcome.PERMFAIL), (451, Outcome.TEMPFAIL)])
def test_mail_refused_applies_to_all(code: int, outcome: Outcome) -> None:
    proto = greeted(*ALL)
    proto.begin(tx("a@x", "b@x"))
    proto.data_to_send()
    wire = f"{code} no\r\n503 5.5.1 MAIL first\r\n503 5.5.1 MAIL first\r\n503 5.5.1 no\r\n".encode()
    assert outcomes(feed(proto, wire)) == [("a@x", outcome, code), ("b@x", outcome, code)]


def test_data_refused_applies_to_accepted_only() -> None:
    proto = greeted(*ALL)
    proto.begin(tx("a@x", "b@x"))
    proto.data_to_send()
    result = feed(proto, b"250 ok\r\n550 no\r\n250 ok\r\n554 5.6.0 no data for you\r\n")
    assert outcomes(result) == [("a@x", Outcome.PERMFAIL, 550), ("b@x", Outcome.PERMFAIL, 554)]


def test_dot_tempfail() -> None:
    proto = greeted(*ALL)
    proto.begin(tx("a@x"))
    proto.data_to_send()
    assert feed(proto, b"250 ok\r\n250 ok\r\n354 go\r\n") == SendBody()
    proto.end_data()
    assert proto.waiting_for is Command.DOT
    assert outcomes(feed(proto, b"451 4.3.0 try later\r\n")) == [("a@x", Outcome.TEMPFAIL, 451)]


def test_data_accepted_with_nobody_sends_only_the_dot() -> None:
    """RFC 2920 §3.1: a sloppy server 354s DATA after every RCPT failed."""
    proto = greeted(*ALL)
    proto.begin(tx("a@x"))
    proto.data_to_send()
    assert feed(proto, b"250 ok\r\n550 no\r\n354 go\r\n") is NEED_DATA
    assert proto.data_to_send() == b".\r\n"
    assert outcomes(feed(proto, b"250 empty message\r\n")) == [("a@x", Outcome.PERMFAIL, 550)]


def test_rset_before_next_transaction_after_a_failure_only() -> None:
    proto = greeted(*ALL)
    proto.begin(tx("a@x"))
    proto.data_to_send()
    feed(proto, b"250 ok\r\n550 no\r\n554 no\r\n")
    proto.begin(tx("b@x"))
    assert proto.data_to_send().startswith(b"RSET\r\nMAIL FROM:")      # pipelined with the group
    assert feed(proto, b"250 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n") == SendBody()
    proto.end_data()
    assert outcomes(feed(proto, b"250 ok\r\n")) == [("b@x", Outcome.OK, 250)]
    proto.begin(tx("c@x"))
    assert proto.data_to_send().startswith(b"MAIL FROM:")              # clean after the dot


def test_rset_refused_fails_the_transaction_temporarily() -> None:
    proto = greeted("SIZE 1000")
    proto.begin(tx("a@x"))
    proto.data_to_send()
    feed(proto, b"250 ok\r\n")
    assert proto.data_to_send() == b"RCPT TO:<a@x>\r\n"
    feed(proto, b"550 no\r\n")
    proto.begin(tx("b@x"))
    assert proto.data_to_send() == b"RSET\r\n"
    assert outcomes(feed(proto, b"500 what\r\n")) == [("b@x", Outcome.TEMPFAIL, 500)]


def test_dsn_parameters_when_offered() -> None:
    proto = greeted(*ALL)
    rcpt = Recipient("x@example.com", frozenset({"FAILURE", "SUCCESS"}), "rfc822;x+tag@example.com")
    proto.begin(Transaction("a@example.org", (rcpt, Recipient("y@x", frozenset({"NEVER"}))),
                            size=5, ret="HDRS", envid="id=1 é", body="8BITMIME"))
    assert proto.data_to_send().decode() == (
        "MAIL FROM:<a@example.org> SIZE=5 BODY=8BITMIME RET=HDRS ENVID=id+3D1+20+C3+A9\r\n"
        "RCPT TO:<x@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x+2Btag@example.com\r\n"
        "RCPT TO:<y@x> NOTIFY=NEVER\r\nDATA\r\n")


def test_no_dsn_parameters_when_not_offered() -> None:
    proto = greeted("PIPELINING")
    rcpt = Recipient("x@example.com", frozenset({"FAILURE"}), "x@example.com")
    proto.begin(Transaction("a@example.org", (rcpt,), size=5, ret="FULL", envid="e", body="8BITMIME"))
    assert proto.data_to_send() == b"MAIL FROM:<a@example.org>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n"


@pytest.mark.parametrize("address, problem", [
    ("a\r\nRSET@x", "CR or LF"), ("a\n@x", "CR or LF"), ("a\x00@x", "control character"),
    ("a\x7f@x", "control character"), ("a\x85@x", "control character"),
    ("a>b@x", "angle bracket"), ("<a@x", "angle bracket"), ("", "empty"),
])
def test_unsendable_recipient_refused_alone(address: str, problem: str) -> None:
    proto = greeted(*ALL)
    proto.begin(tx(address, "ok@x"))
    wire = proto.data_to_send()
    assert wire == b"MAIL FROM:<a@example.org>\r\nRCPT TO:<ok@x>\r\nDATA\r\n"
    feed(proto, b"250 ok\r\n250 ok\r\n354 go\r\n")
    proto.end_data()
    result = feed(proto, b"250 ok\r\n")
    first = result.result.recipients[0]
    assert (first.outcome, first.reply.enhanced, first.from_peer) == (Outcome.PERMFAIL, "5.1.3", False)
    assert problem in first.reply.text


def test_unsendable_sender_sends_nothing() -> None:
    proto = greeted(*ALL)
    proto.begin(tx("a@x", "b@x", sender="evil\r\nRCPT TO:<c@x>"))
    assert proto.data_to_send() == b""
    result = proto.next_event()
    assert [(r.outcome, r.reply.enhanced) for r in result.result.recipients] == [
        (Outcome.PERMFAIL, "5.1.7")] * 2


def test_message_above_peer_size_is_refused_without_sending() -> None:
    proto = greeted(*ALL)               # SIZE 1000
    proto.begin(tx("a@x", size=1001))
    assert proto.data_to_send() == b""
    result = proto.next_event()
    assert outcomes(result) == [("a@x", Outcome.PERMFAIL, 552)]
    assert result.result.recipients[0].reply.enhanced == "5.3.4"
    proto.begin(tx("a@x", size=1000))   # the session goes on, nothing to reset
    assert proto.data_to_send().startswith(b"MAIL FROM:<a@example.org> SIZE=1000\r\n")


def test_size_zero_means_no_limit() -> None:
    proto = greeted("PIPELINING", "SIZE 0")
    proto.begin(tx("a@x", size=10**9))
    assert proto.data_to_send().startswith(b"MAIL FROM:<a@example.org> SIZE=1000000000\r\n")


def test_smtputf8() -> None:
    proto = greeted("PIPELINING")
    proto.begin(tx("jos\u00e9@x", "ascii@x"))
    assert proto.data_to_send() == b"MAIL FROM:<a@example.org>\r\nRCPT TO:<ascii@x>\r\nDATA\r\n"
    feed(proto, b"250 ok\r\n250 ok\r\n354 go\r\n")
    proto.end_data()
    result = feed(proto, b"250 ok\r\n").result.recipients[0]
    assert (result.outcome, result.reply.enhanced) == (Outcome.PERMFAIL, "5.6.7")
    proto = greeted("PIPELINING", "SMTPUTF8")
    proto.begin(tx("jos\u00e9@x"))
    assert proto.data_to_send() == "MAIL FROM:<a@example.org> SMTPUTF8\r\nRCPT TO:<jos\u00e9@x>\r\nDATA\r\n".encode()
    proto = greeted("PIPELINING")
    proto.begin(tx("a@x", smtputf8=True))
    assert outcomes(proto.next_event()) == [("a@x", Outcome.PERMFAIL, 553)]


def test_lmtp_one_reply_per_accepted_recipient() -> None:
    proto = greeted("PIPELINING", "ENHANCEDSTATUSCODES", lmtp=True)
    proto.begin(tx("a@x", "b@x", "c@x", "d@x"))
    proto.data_to_send()
    assert feed(proto, b"250 ok\r\n250 ok\r\n250 ok\r\n550 no c\r\n250 ok\r\n354 go\r\n") == SendBody()
    proto.send_data(b"Subject: hi\r\n\r\nbody\r\n")
    proto.end_data()
    assert feed(proto, b"250 2.0.0 a delivered\r\n") is NEED_DATA
    assert feed(proto, b"452 4.2.2 b over quota\r\n") is NEED_DATA
    result = feed(proto, b"552 5.2.2 d too big\r\n")
    assert outcomes(result) == [("a@x", Outcome.OK, 250), ("b@x", Outcome.TEMPFAIL, 452),
                                ("c@x", Outcome.PERMFAIL, 550), ("d@x", Outcome.PERMFAIL, 552)]


def test_abort_keeps_final_answers() -> None:
    proto = greeted(*ALL, lmtp=True)
    proto.begin(tx("a@x", "b@x", "c@x"))
    proto.data_to_send()
    feed(proto, b"250 ok\r\n250 ok\r\n550 no\r\n250 ok\r\n354 go\r\n")
    proto.end_data()
    feed(proto, b"250 a done\r\n")
    proto.receive_data(b"")
    with pytest.raises(PeerClosed, match="closed by the peer"):
        proto.next_event()
    result = proto.abort(Reply(451, "4.4.2", "lost"), "lost")
    assert [(r.outcome, r.reply.code, r.from_peer) for r in result.recipients] == [
        (Outcome.OK, 250, True), (Outcome.PERMFAIL, 550, True), (Outcome.TEMPFAIL, 451, False)]
    assert result.error == "lost"
    with pytest.raises(PeerClosed):
        proto.next_event()


def test_421_sets_closing() -> None:
    proto = greeted(*ALL)
    proto.begin(tx("a@x"))
    proto.data_to_send()
    proto.receive_data(b"421 4.3.2 shutting down\r\n")
    assert proto.next_event() is NEED_DATA and proto.closing


@pytest.mark.parametrize("wire, error", [
    (b"250 ok\r\n250 ok\r\n250 ok\r\n", "unexpected reply 250 ok to DATA"),
    (b"354 ok\r\n", "unexpected reply 354 ok to MAIL"),
])
def test_wrong_positive_reply_is_a_protocol_error(wire: bytes, error: str) -> None:
    proto = greeted(*ALL)
    proto.begin(tx("a@x"))
    proto.data_to_send()
    proto.receive_data(wire)
    with pytest.raises(PeerProtocolError, match=error):
        while proto.next_event() is not NEED_DATA:
            pass


def test_auth_plain() -> None:
    proto = greeted("AUTH PLAIN LOGIN")
    proto.auth("PLAIN", "gilles", "s3cret")
    token = base64.b64encode(b"\0gilles\0s3cret")
    assert proto.data_to_send() == b"AUTH PLAIN " + token + b"\r\n"
    assert feed(proto, b"235 2.7.0 ok\r\n") == Replied(Command.AUTH, Reply(235, "2.7.0", "ok"))


def test_auth_plain_challenge_is_refused() -> None:
    proto = greeted("AUTH PLAIN")
    proto.auth("PLAIN", "u", "p")
    proto.data_to_send()
    with pytest.raises(PeerProtocolError, match="unexpected AUTH challenge"):
        feed(proto, b"334 \r\n")


def test_auth_login() -> None:
    proto = greeted("AUTH LOGIN")
    proto.auth("LOGIN", "gilles", "s3cret")
    assert proto.data_to_send() == b"AUTH LOGIN\r\n"
    assert feed(proto, b"334 VXNlcm5hbWU6\r\n") is NEED_DATA
    assert proto.data_to_send() == base64.b64encode(b"gilles") + b"\r\n"
    assert feed(proto, b"334 UGFzc3dvcmQ6\r\n") is NEED_DATA
    assert proto.data_to_send() == base64.b64encode(b"s3cret") + b"\r\n"
    assert feed(proto, b"535 5.7.8 bad\r\n") == Replied(Command.AUTH, Reply(535, "5.7.8", "bad"))


def test_starttls_reply_with_trailing_data_is_refused() -> None:
    proto = greeted("STARTTLS")
    proto.starttls()
    proto.data_to_send()
    with pytest.raises(PeerProtocolError, match="before TLS"):
        feed(proto, b"220 go ahead\r\n250 injected\r\n")


def test_tls_started_forgets_extensions() -> None:
    proto = greeted("STARTTLS", "PIPELINING")
    proto.starttls()
    proto.data_to_send()
    assert feed(proto, b"220 go ahead\r\n") == Replied(Command.STARTTLS, Reply(220, "", "go ahead"))
    proto.tls_started()
    assert proto.extensions == Extensions()


def test_commands_out_of_turn_are_usage_errors() -> None:
    proto = ClientProtocol()
    with pytest.raises(UsageError):
        proto.hello("x")               # greeting still owed
    proto = greeted()
    with pytest.raises(UsageError):
        proto.send_data(b"x")
    with pytest.raises(ValueError):
        proto.helo("bad name\r\n")


def test_from_envelopes() -> None:
    first = Envelope.new(0x1234, dispatcher="relay", rcpt="a@x", dest="a@x", type="mta",
                         sender="s@y", dsn_ret="HDRS", dsn_envid="e1", flags={"smtputf8"},
                         dsn_notify={"FAILURE"}, dsn_orcpt="rfc822;A@x")
    second = first.replace(id=(0x1234 << 32) | 7, dest="b@x", dsn_notify=frozenset(), dsn_orcpt="")
    t = Transaction.from_envelopes([first, second], size=10)
    assert (t.sender, t.ret, t.envid, t.smtputf8, t.size) == ("s@y", "HDRS", "e1", True, 10)
    assert t.recipients == (Recipient("a@x", frozenset({"FAILURE"}), "rfc822;A@x", first.id),
                            Recipient("b@x", frozenset(), "", second.id))


# -- any bytes from the peer --------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(max_size=300), max_size=8), lmtp=st.booleans(),
       pipelining=st.booleans())
@example(chunks=[b"250 ok\r\n" * 3 + b"354 go\r\n", b"250 ok\r\n"], lmtp=False, pipelining=True)
def test_any_peer_bytes_give_events_or_peer_error(chunks: list[bytes], lmtp: bool,
                                                   pipelining: bool) -> None:
    keywords = ("PIPELINING", "SIZE 100") if pipelining else ("SIZE 100",)
    proto = greeted(*keywords, lmtp=lmtp, limits=ClientLimits(max_reply_lines=20))
    proto.begin(tx("a@x", "b@x", size=10))
    try:
        for chunk in chunks + [b""]:
            proto.receive_data(chunk)
            while proto.waiting_for is not None or proto.in_transaction:
                event = proto.next_event()
                if event is NEED_DATA:
                    break
                if isinstance(event, SendBody):
                    proto.send_data(b"body")
                    proto.end_data()
                elif isinstance(event, TransactionDone):
                    assert len(event.result.recipients) == 2
                    if proto.waiting_for is None:
                        proto.noop()
                proto.data_to_send()
    except PeerProtocolError:
        pass


# -- the message data ---------------------------------------------------------

def stuff(chunks: list[bytes]) -> bytes:
    stuffer = DataStuffer()
    return b"".join(stuffer.feed(c) for c in chunks) + stuffer.end()


def normalise(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def unstuff(wire: bytes) -> bytes:
    assert wire.endswith(b".\r\n")
    body = wire[:-3]
    lines = body.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


@pytest.mark.parametrize("chunks, wire", [
    ([b""], b".\r\n"),
    ([b"hello\r\n"], b"hello\r\n.\r\n"),
    ([b"no final line end"], b"no final line end\r\n.\r\n"),
    ([b".starts with a dot\r\n"], b"..starts with a dot\r\n.\r\n"),
    ([b"a\r\n.\r\nb\r\n"], b"a\r\n..\r\nb\r\n.\r\n"),
    ([b"a\r\n", b".b\r\n"], b"a\r\n..b\r\n.\r\n"),
    ([b"a\r", b"\n.b\r\n"], b"a\r\n..b\r\n.\r\n"),
    ([b"a\r", b".b"], b"a\r\n..b\r\n.\r\n"),
    ([b"bare\nLF\n.dot\n"], b"bare\r\nLF\r\n..dot\r\n.\r\n"),
    ([b"bare\rCR\r"], b"bare\r\nCR\r\n.\r\n"),
    ([b"smuggle\n.\r\nMAIL FROM:<x>\r\n"], b"smuggle\r\n..\r\nMAIL FROM:<x>\r\n.\r\n"),
    ([b"x\r.\r"], b"x\r\n..\r\n.\r\n"),
])
def test_stuffer_cases(chunks: list[bytes], wire: bytes) -> None:
    assert stuff(chunks) == wire


def test_stuffer_passes_a_clean_chunk_uncopied() -> None:
    chunk = b"Subject: x\r\n\r\n" + b"a line of text\r\n" * 8000       # ~128 KiB
    stuffer = DataStuffer()
    assert stuffer.feed(chunk) is chunk
    assert stuffer.end() == b".\r\n"


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400).map(lambda b: b.replace(b"z", b".").replace(b"y", b"\r")
                                        .replace(b"x", b"\n")),
       cuts=st.lists(st.integers(0, 400), max_size=6))
def test_stuffer_output_does_not_depend_on_the_cuts(data: bytes, cuts: list[int]) -> None:
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]
    wire = stuff(chunks)
    assert wire == stuff([data])
    body = wire[:-3]
    assert b"\r\n.\r\n" not in body[:-2] and not body.startswith(b".\r\n")
    assert wire.count(b"\n") == wire.count(b"\r\n") == wire.count(b"\r")
    expected = normalise(data)
    if expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert unstuff(wire) == expected


# -- xtext --------------------------------------------------------------------

@given(st.text(min_size=1, max_size=100))
@example("+=\x00 é")
def test_xtext_round_trips_through_the_servers_decoder(value: str) -> None:
    encoded = xtext(value)
    assert all(0x21 <= ord(c) <= 0x7E for c in encoded)
    raw = value.encode("utf-8")
    if all(0x20 <= b < 0x7F for b in raw) and len(raw) <= 100:
        assert _xtext(encoded, 100, "ENVID") == value
