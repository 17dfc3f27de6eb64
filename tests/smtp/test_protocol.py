"""The SMTP server protocol machine: one table of dialogues, fed three ways.

Each case is the client's bytes, the exact reply lines (banner left out) and,
where it matters, the events.  Every case is fed whole, byte by byte and in
random splits, and must give the same result each way (h11's habit).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from postillion.errors import Reply
from postillion.smtp.protocol import (
    NEED_DATA,
    START_DATA,
    CommandRejected,
    ConnectionClosed,
    DataChunk,
    DataEnd,
    DataStart,
    Event,
    Helo,
    MailFrom,
    Path,
    ProtocolLimits,
    Quit,
    RcptTo,
    Reset,
    ServerProtocol,
    State,
)

from .driver import FEEDS, HOSTNAME, PEER, accept_all, drive

EHLO = b"EHLO client.example\r\n"
EHLO_LINES = [
    f"250-{HOSTNAME} Hello client.example [{PEER}], pleased to meet you",
    "250-PIPELINING",
    "250-8BITMIME",
    "250-ENHANCEDSTATUSCODES",
    "250-SIZE 36700160",
    "250 HELP",
]
MAIL = b"MAIL FROM:<alice@example.com>\r\n"
RCPT = b"RCPT TO:<bob@example.net>\r\n"
OK = "250 2.0.0 Ok"
RCPT_OK = "250 2.1.5 Destination address valid: Recipient ok"
GO = '354 Enter mail, end with "." on a line by itself'
QUEUED = "250 2.0.0 Message accepted for delivery"
BYE = "221 2.0.0 Bye"
UNRECOGNIZED = "500 5.5.1 Invalid command: Command unrecognized"
SENDER_SYNTAX = "553 5.1.7 Sender address syntax error"
RCPT_SYNTAX = "501 5.1.3 Recipient address syntax error"
TX = EHLO + MAIL + RCPT  # a transaction ready for DATA
TX_LINES = [*EHLO_LINES, OK, RCPT_OK]


@dataclass(frozen=True)
class Case:
    name: str
    wire: bytes
    replies: list[str]
    events: list[Event] | None = None
    limits: ProtocolLimits = ProtocolLimits()


def sender(line: bytes, reply: str) -> Case:
    return Case(f"mail {line!r}", EHLO + b"MAIL FROM:" + line + b"\r\n", [*EHLO_LINES, reply])


def rcpt(line: bytes, reply: str) -> Case:
    return Case(f"rcpt {line!r}", EHLO + MAIL + b"RCPT TO:" + line + b"\r\n", [*EHLO_LINES, OK, reply])


def message(content: bytes) -> bytes:
    return TX + b"DATA\r\n" + content


CASES: list[Case] = [
    # -- greeting --------------------------------------------------------------
    Case("ehlo", EHLO, EHLO_LINES, [Helo("client.example", True), ConnectionClosed("eof")]),
    Case("helo", b"HELO client.example\r\n",
         [f"250 {HOSTNAME} Hello client.example [{PEER}], pleased to meet you"],
         [Helo("client.example", False), ConnectionClosed("eof")]),
    Case("helo ipv4 literal", b"HELO [192.0.2.1]\r\n",
         [f"250 {HOSTNAME} Hello [192.0.2.1] [{PEER}], pleased to meet you"]),
    Case("ehlo ipv6 literal", b"EHLO [IPv6:2001:db8::1]\r\n",
         [EHLO_LINES[0].replace("client.example", "[IPv6:2001:db8::1]"), *EHLO_LINES[1:]]),
    Case("helo trailing dot", b"HELO client.example.\r\n",
         [f"250 {HOSTNAME} Hello client.example. [{PEER}], pleased to meet you"]),
    Case("helo without domain", b"HELO\r\nEHLO \r\n",
         ["501 5.5.4 Syntax: HELO hostname", "501 5.5.4 Syntax: EHLO hostname"]),
    Case("helo bad domains",
         b"HELO two words\r\nHELO a..b\r\nHELO [1.2.3]\r\nHELO [IPv6:fe80::1%eth0]\r\n"
         b"HELO caf\xc3\xa9.example\r\nHELO " + b"a" * 64 + b".example\r\n",
         ["501 5.5.4 Invalid domain name"] * 6),
    Case("repeated ehlo resets the transaction", EHLO + MAIL + EHLO + RCPT,
         [*EHLO_LINES, OK, *EHLO_LINES, "503 5.5.1 Bad sequence of commands: need MAIL before RCPT"]),
    # -- a whole message ---------------------------------------------------------
    Case("message", message(b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n"),
         [*TX_LINES, GO, QUEUED, BYE],
         [Helo("client.example", True),
          MailFrom(Path("alice", "example.com"), {}),
          RcptTo(Path("bob", "example.net"), {}),
          DataStart(),
          DataChunk(b"Subject: hi\r\n\r\nbody\r\n"),
          DataEnd(21, False),
          Quit(),
          ConnectionClosed("quit")]),
    Case("empty message", message(b".\r\n"), [*TX_LINES, GO, QUEUED],
         [Helo("client.example", True), MailFrom(Path("alice", "example.com"), {}),
          RcptTo(Path("bob", "example.net"), {}), DataStart(), DataEnd(0, False),
          ConnectionClosed("eof")]),
    Case("two messages", message(b"one\r\n.\r\n") + MAIL + RCPT + b"DATA\r\ntwo\r\n.\r\n",
         [*TX_LINES, GO, QUEUED, OK, RCPT_OK, GO, QUEUED]),
    Case("pipelined after the terminator", message(b"x\r\n.\r\n\nNOOP\r\n"),
         [*TX_LINES, GO, QUEUED, UNRECOGNIZED, OK]),
    Case("case-insensitive, LF line ends",
         b"ehlo client.example\nmail from:<a@b.example>\nRcPt To:<c@d.example>\ndata\nx\r\n.\r\n",
         [*EHLO_LINES, OK, RCPT_OK, GO, QUEUED]),
    # -- sequence ----------------------------------------------------------------
    Case("mail before helo", MAIL,
         ["503 5.5.1 Bad sequence of commands: send HELO/EHLO first"],
         [CommandRejected("MAIL FROM:<alice@example.com>",
                          Reply(503, "5.5.1", "Bad sequence of commands: send HELO/EHLO first")),
          ConnectionClosed("eof")]),
    Case("mail twice", EHLO + MAIL + MAIL,
         [*EHLO_LINES, OK, "503 5.5.1 Bad sequence of commands: sender already specified"]),
    Case("rcpt before mail", EHLO + RCPT,
         [*EHLO_LINES, "503 5.5.1 Bad sequence of commands: need MAIL before RCPT"]),
    Case("data without rcpt", EHLO + MAIL + b"DATA\r\n",
         [*EHLO_LINES, OK, "503 5.5.1 Bad sequence of commands: need RCPT before DATA"]),
    Case("data with argument", TX + b"DATA now\r\n", [*TX_LINES, "501 5.5.4 Syntax: DATA"]),
    # -- simple verbs --------------------------------------------------------------
    Case("rset", EHLO + MAIL + RCPT + b"RSET\r\n" + RCPT,
         [*EHLO_LINES, OK, RCPT_OK, "250 2.0.0 Reset state",
          "503 5.5.1 Bad sequence of commands: need MAIL before RCPT"]),
    Case("rset before helo", b"RSET\r\n" + MAIL, ["250 2.0.0 Reset state",
         "503 5.5.1 Bad sequence of commands: send HELO/EHLO first"]),
    Case("rset with argument", b"RSET x\r\n", ["501 5.5.4 Invalid command: unexpected argument"]),
    Case("noop and help", b"NOOP\r\nnoop whatever\r\nHELP\r\nHELP MAIL\r\n",
         [OK, OK, "214 2.0.0 End of HELP info", "214 2.0.0 End of HELP info"],
         [ConnectionClosed("eof")]),
    Case("not implemented", b"VRFY root\r\nEXPN staff\r\nTURN\r\nETRN example.com\r\n"
         b"STARTTLS\r\nAUTH PLAIN\r\nBDAT 10 LAST\r\n",
         ["502 5.5.1 Command not implemented"] * 7),
    Case("unknown", b"FOO\r\n\r\n MAIL FROM:<a@b>\r\nMAILFROM:<a@b>\r\n", [UNRECOGNIZED] * 4),
    Case("non-ascii verb", "MAİL FROM:<a@b>\r\n".encode(), [UNRECOGNIZED]),
    Case("quit", b"QUIT\r\nNOOP\r\n", [BYE], [Quit(), ConnectionClosed("quit")]),
    Case("quit with argument", b"QUIT now\r\n", ["501 5.5.4 Invalid command: unexpected argument"]),
    Case("eof in a line", b"NOOP\r\nNOO", [OK], [ConnectionClosed("eof")]),
    Case("control byte", b"NOOP\x00\r\nNOOP\r\r\nNOOP\ta\r\n",
         ["501 5.5.4 Invalid command: control character in command"] * 3,
         [CommandRejected("NOOP\\x00", Reply(501, "5.5.4", "Invalid command: control character in command")),
          CommandRejected("NOOP\\x0d", Reply(501, "5.5.4", "Invalid command: control character in command")),
          CommandRejected("NOOP\\x09a", Reply(501, "5.5.4", "Invalid command: control character in command")),
          ConnectionClosed("eof")]),
    Case("http request", b"GET / HTTP/1.1\r\nHost: mx\r\n\r\n", [UNRECOGNIZED],
         [CommandRejected("GET / HTTP/1.1", Reply(500, "5.5.1", "Invalid command: Command unrecognized")),
          ConnectionClosed("http request")]),
    Case("http connect", EHLO + b"CONNECT mx:25 HTTP/1.0\r\nQUIT\r\n", [*EHLO_LINES, UNRECOGNIZED]),
    Case("too many failed commands", b"FOO\r\n" * 12, [UNRECOGNIZED] * 10 +
         ["421 4.7.0 Too many failed commands, closing connection"]),
    Case("a good command resets the failure count", b"FOO\r\n" * 9 + b"NOOP\r\n" + b"FOO\r\n" * 9,
         [UNRECOGNIZED] * 9 + [OK] + [UNRECOGNIZED] * 9),
    # -- senders (docs/smtp.md, Addresses and parameters) ---------------------------
    sender(b"<>", OK),
    sender(b" <alice@example.com>", OK),
    sender(b"<@relay.example,@other.example:alice@example.com>", OK),
    sender(b"<a.b+tag!#$%&'*/=?^_`{|}~-x@sub_domain.ex-ample.com>", OK),
    sender(b"<alice@[192.0.2.1]>", OK),
    sender(b"<alice@[IPv6:2001:db8::1]>", OK),
    sender(b"<" + b"a" * 64 + b"@example.com>", OK),
    sender(b"<alice@example.com", SENDER_SYNTAX),
    sender(b"alice@example.com", SENDER_SYNTAX),
    sender(b"", SENDER_SYNTAX),
    sender(b'<"alice"@example.com>', SENDER_SYNTAX),
    sender(b'<"a@b"@example.com>', SENDER_SYNTAX),
    sender(b"<a..b@example.com>", SENDER_SYNTAX),
    sender(b"<.a@example.com>", SENDER_SYNTAX),
    sender(b"<a.@example.com>", SENDER_SYNTAX),
    sender(b"<a b@example.com>", SENDER_SYNTAX),
    sender(b"<a@b@example.com>", SENDER_SYNTAX),
    sender(b"<alice@>", SENDER_SYNTAX),
    sender(b"<alice@example.com.>", SENDER_SYNTAX),
    sender(b"<alice@exa..mple>", SENDER_SYNTAX),
    sender(b"<alice@ex ample.com>", SENDER_SYNTAX),
    sender(b"<alice@[300.1.1.1]>", SENDER_SYNTAX),
    sender(b"<alice@[tag:stuff]>", SENDER_SYNTAX),
    sender(b"<alice@example.com>junk", SENDER_SYNTAX),
    sender(b"<@relay.example:>", SENDER_SYNTAX),
    sender(b"<@relay..example:alice@example.com>", SENDER_SYNTAX),
    sender(b"<" + b"a" * 65 + b"@example.com>", SENDER_SYNTAX),
    sender(b"<a@" + b"b" * 63 + (b"." + b"c" * 63) * 4 + b">", SENDER_SYNTAX),
    sender(b"<a@" + b"b" * 64 + b".com>", SENDER_SYNTAX),
    sender("<jörg@example.com>".encode(), "553 5.6.7 Non-ASCII address requires SMTPUTF8"),
    sender(b"<j\xf6rg@example.com>", SENDER_SYNTAX),  # not UTF-8 at all
    # A-labels (RFC 5891 §5.4): valid ones pass, IDNA 2003's and 2008's alike.
    sender(b"<a@xn--bcher-kva.example>", OK),
    sender(b"<a@XN--BCHER-KVA.example>", OK),
    sender(b"<a@xn--fa-hia.de>", OK),            # faß: IDNA 2008 only
    sender(b"<a@xn--ls8h.la>", OK),              # an emoji: IDNA 2003 only
    sender(b"<a@xn--mgbh0fb.xn--kgbechtv>", OK),  # right-to-left
    sender(b"<a@xn--->", SENDER_SYNTAX),         # decodes to nothing
    sender(b"<a@xn--zz>", SENDER_SYNTAX),        # not Punycode
    sender(b"<a@xn--zz.example>", SENDER_SYNTAX),
    sender(b"<a@mx.xn--abc-.example>", SENDER_SYNTAX),  # decodes to plain ASCII
    sender(b"<a@xn--a>", SENDER_SYNTAX),         # decodes to a control character
    sender(b"<a@xn--a-ecp.example>", SENDER_SYNTAX),    # a\u2488: no IDNA allows it
    sender(b"<a@xn---ls8h.la>", SENDER_SYNTAX),  # not the canonical spelling
    Case("mail without from", EHLO + b"MAIL TO:<a@b>\r\nMAIL\r\n",
         [*EHLO_LINES, "501 5.5.4 Syntax: MAIL FROM:<address>", "501 5.5.4 Syntax: MAIL FROM:<address>"]),
    Case("null sender and route events",
         EHLO + b"MAIL FROM:<>\r\nRCPT TO:<@a.example,@b.example:u%x!y@d.example>\r\nRCPT TO:<Postmaster>\r\n",
         [*EHLO_LINES, OK, RCPT_OK, RCPT_OK],
         [Helo("client.example", True), MailFrom(None, {}), RcptTo(Path("u%x!y", "d.example"), {}),
          RcptTo(Path("Postmaster", ""), {}), ConnectionClosed("eof")]),
    # -- recipients ----------------------------------------------------------------------
    rcpt(b"<>", RCPT_SYNTAX),
    rcpt(b"<a@b", RCPT_SYNTAX),
    rcpt(b"", RCPT_SYNTAX),
    rcpt(b'<"x y"@example.com>', RCPT_SYNTAX),
    rcpt("<bö@example.com>".encode(), "553 5.6.7 Non-ASCII address requires SMTPUTF8"),
    rcpt(b"<b@xn--bcher-kva.example>", RCPT_OK),
    rcpt(b"<b@xn--->", RCPT_SYNTAX),
    rcpt(b"<b@xn--zz>", RCPT_SYNTAX),
    rcpt(b"<b@sub.xn--nxasmm1c.example>", RCPT_OK),  # βόλος: IDNA 2008 only
    rcpt(b"<b@xn--abc-.example>", RCPT_SYNTAX),
    rcpt(b"<b@example.com> NOTIFY=NEVER", "555 5.5.4 Unsupported parameter"),
    Case("rcpt without to", EHLO + MAIL + b"RCPT <a@b>\r\n",
         [*EHLO_LINES, OK, "501 5.5.4 Syntax: RCPT TO:<address>"]),
    # -- parameters ----------------------------------------------------------------------
    Case("mail parameters", EHLO + b"MAIL FROM:<a@b.example> size=1000  body=8bitmime \r\n",
         [*EHLO_LINES, OK],
         [Helo("client.example", True),
          MailFrom(Path("a", "b.example"), {"SIZE": "1000", "BODY": "8BITMIME"}),
          ConnectionClosed("eof")]),
    sender(b"<a@b.example> SIZE=36700161", "552 5.3.4 Message too big for system"),
    sender(b"<a@b.example> SIZE=36700160", OK),
    sender(b"<a@b.example> SIZE=big", "501 5.5.4 Invalid parameter: SIZE"),
    sender(b"<a@b.example> SIZE", "501 5.5.4 Invalid parameter: SIZE"),
    sender(b"<a@b.example> SIZE=", "501 5.5.4 Syntax error in parameters"),
    sender(b"<a@b.example> SIZE=1 SIZE=2", "501 5.5.4 Duplicate parameter: SIZE"),
    sender(b"<a@b.example> BODY=7BIT", OK),
    sender(b"<a@b.example> BODY=BINARYMIME", "501 5.5.4 Invalid parameter: BODY"),
    sender(b"<a@b.example> =x", "501 5.5.4 Syntax error in parameters"),
    sender(b"<a@b.example> FOO=bar", "555 5.5.4 Unsupported parameter"),
    sender(b"<a@b.example> SMTPUTF8", "555 5.5.4 Unsupported parameter"),
    sender(b"<a@b.example> RET=FULL", "555 5.5.4 Unsupported parameter"),
    # -- limits ------------------------------------------------------------------------
    Case("max rcpt", EHLO + MAIL + RCPT * 3 + b"DATA\r\nx\r\n.\r\n",
         [*EHLO_LINES, OK, RCPT_OK, RCPT_OK, "452 4.5.3 Too many recipients", GO, QUEUED],
         limits=ProtocolLimits(max_rcpt=2)),
    Case("max rcpt is per transaction", EHLO + MAIL + RCPT * 2 + b"RSET\r\n" + MAIL + RCPT * 2,
         [*EHLO_LINES, OK, RCPT_OK, RCPT_OK, "250 2.0.0 Reset state", OK, RCPT_OK, RCPT_OK],
         limits=ProtocolLimits(max_rcpt=2)),
    Case("limit refusals are not failures", EHLO + MAIL + RCPT * 5,
         [*EHLO_LINES, OK, RCPT_OK] + ["452 4.5.3 Too many recipients"] * 4,
         limits=ProtocolLimits(max_rcpt=1, max_failed_commands=2)),
    Case("max mails", message(b"x\r\n.\r\n") + MAIL + b"RSET\r\n" + MAIL,
         [*TX_LINES, GO, QUEUED, "452 4.5.3 Too many messages sent", "250 2.0.0 Reset state",
          "452 4.5.3 Too many messages sent"],
         limits=ProtocolLimits(max_mails=1)),
    Case("max mails counts messages, not MAIL", EHLO + MAIL + b"RSET\r\n" + MAIL + RCPT,
         [*EHLO_LINES, OK, "250 2.0.0 Reset state", OK, RCPT_OK],
         limits=ProtocolLimits(max_mails=1)),
    Case("command line at the limit", b"NOOP " + b"x" * 9 + b"\r\n" + b"NOOP " + b"x" * 9 + b"\n",
         [OK, OK], limits=ProtocolLimits(max_line=16)),
    Case("command line too long", b"NOOP " + b"x" * 10 + b"\r\nNOOP\r\n",
         ["500 5.5.2 Line too long"],
         [CommandRejected("NOOP xxxxxxxxxx\\x0d", Reply(500, "5.5.2", "Line too long")),
          ConnectionClosed("line too long")],
         limits=ProtocolLimits(max_line=16)),
    Case("message too big", message(b"12345678\r\n" * 3 + b".\r\nNOOP\r\n"),
         [*TX_LINES, GO, "552 5.3.4 Message too big for system", OK],
         [Helo("client.example", True), MailFrom(Path("alice", "example.com"), {}),
          RcptTo(Path("bob", "example.net"), {}), DataStart(), DataChunk(b"12345678\r\n" * 2),
          DataEnd(30, True), ConnectionClosed("eof")],
         limits=ProtocolLimits(max_message_size=24)),
    Case("message at the size limit", message(b"12345678\r\n" * 2 + b"..\r\n.\r\n"),
         [*TX_LINES, GO, QUEUED], limits=ProtocolLimits(max_message_size=23)),
    Case("data line at the limit", message(b"x" * 14 + b"\r\n" + b"y" * 15 + b"\nz\r\n.\r\n"),
         [*TX_LINES, GO, QUEUED], limits=ProtocolLimits(max_data_line=16)),
    Case("data line too long", message(b"ok\r\n" + b"x" * 15 + b"\r\n.\r\nQUIT\r\n"),
         [*TX_LINES, GO, "500 5.5.2 Line too long"],
         [Helo("client.example", True), MailFrom(Path("alice", "example.com"), {}),
          RcptTo(Path("bob", "example.net"), {}), DataStart(), DataChunk(b"ok\r\n"),
          ConnectionClosed("data line too long")],
         limits=ProtocolLimits(max_data_line=16)),
    Case("endless data line", message(b"ok\r\n" + b"x" * 100),
         [*TX_LINES, GO, "500 5.5.2 Line too long"], limits=ProtocolLimits(max_data_line=16)),
    Case("eof in data", message(b"Subject: x\r\n\r\nno end"), [*TX_LINES, GO],
         [Helo("client.example", True), MailFrom(Path("alice", "example.com"), {}),
          RcptTo(Path("bob", "example.net"), {}), DataStart(), DataChunk(b"Subject: x\r\n\r\n"),
          ConnectionClosed("eof in data")]),
]


@pytest.mark.parametrize("feed", [f for _, f in FEEDS], ids=[n for n, _ in FEEDS])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_protocol_case(case: Case, feed) -> None:
    run = drive(feed(case.wire), case.limits)
    assert run.replies[0] == f"220 {HOSTNAME} ESMTP Postillion"
    size = f"250-SIZE {case.limits.max_message_size}"
    assert run.replies[1:] == [size if r == "250-SIZE 36700160" else r for r in case.replies]
    if case.events is not None:
        assert run.events == case.events


# -- pipelining --------------------------------------------------------------------------


def test_one_write_four_replies_in_order() -> None:
    proto = ServerProtocol(HOSTNAME, PEER)
    proto.receive_data(EHLO)
    helo = proto.next_event()
    proto.send(proto.helo_reply(helo))
    proto.data_to_send()
    proto.receive_data(MAIL + RCPT + b"RCPT TO:<carol@example.net>\r\nDATA\r\n")
    answers = [Reply(250, "2.0.0", "Ok"), Reply(250, "2.1.5", "Recipient ok"),
               Reply(550, "5.1.1", "Invalid recipient: <carol@example.net>"), START_DATA]
    events = []
    for answer in answers:
        event = proto.next_event()
        events.append(event)
        with pytest.raises(RuntimeError):
            proto.next_event()  # a reply is owed
        proto.send(answer)
    assert [type(e) for e in events] == [MailFrom, RcptTo, RcptTo, DataStart]
    assert proto.data_to_send() == b"".join(a.to_bytes() for a in answers)
    assert proto.state is State.DATA
    assert proto.next_event() is NEED_DATA


def test_content_waits_for_354() -> None:
    """Bytes after DATA are not content until 354 is sent; if DATA is refused
    they are read as commands (docs/smtp.md)."""
    refused = drive([message(b"NOOP\r\n.\r\n")],
                    answer=lambda p, e: Reply(451, "4.3.0", "Temporary failure")
                    if isinstance(e, DataStart) else accept_all(p, e))
    assert refused.replies[-3:] == ["451 4.3.0 Temporary failure", OK, UNRECOGNIZED]
    accepted = drive([message(b"NOOP\r\n.\r\n")])
    assert accepted.content == [b"NOOP\r\n"]


def test_refused_end_of_data_still_ends_the_transaction() -> None:
    def answer(proto, event):
        if isinstance(event, DataEnd):
            return Reply(451, "4.3.0", "Temporary Error")
        return accept_all(proto, event)

    run = drive([message(b"x\r\n.\r\n") + RCPT + MAIL], answer=answer)
    assert run.replies[-3:] == ["451 4.3.0 Temporary Error",
                                "503 5.5.1 Bad sequence of commands: need MAIL before RCPT", OK]


def test_session_421_closes() -> None:
    run = drive([EHLO + MAIL + b"NOOP\r\n"],
                answer=lambda p, e: Reply(421, "4.3.0", "Temporary Error")
                if isinstance(e, MailFrom) else accept_all(p, e))
    assert run.replies[-1] == "421 4.3.0 Temporary Error"
    assert run.events[-1] == ConnectionClosed("server sent 421")


# -- smuggling and content (docs/smtp.md) ------------------------------------------------------

SMUGGLING = [
    # (content after DATA\r\n, stored message, bytes read as commands after it)
    (b"a\r\n\n.\n\r\n.\r\n", b"a\r\n\r\n.\r\n\r\n"),
    (b"a\n.\r\nMAIL FROM:<evil@x>\r\n\r\n.\r\n", b"a\r\n.\r\nMAIL FROM:<evil@x>\r\n\r\n"),
    (b"a\r\n.\nMAIL FROM:<evil@x>\r\n.\r\n", b"a\r\n.\r\nMAIL FROM:<evil@x>\r\n"),
    (b"a\r.\r\nMAIL FROM:<evil@x>\r\n.\r\n", b"a .\r\nMAIL FROM:<evil@x>\r\n"),
    (b"a\r\n.\rMAIL FROM:<evil@x>\r\n.\r\n", b"a\r\n MAIL FROM:<evil@x>\r\n"),
    (b"a\r\n.\r\r\n.\r\n", b"a\r\n \r\n"),
    (b"a\n\n.\n.\r\n\r\n.\r\n", b"a\r\n\r\n.\r\n.\r\n\r\n"),
    (b"bare\rcr\r\r\n.\r\n", b"bare cr \r\n"),
    (b"\n.\r\n\r\n.\r\n", b"\r\n.\r\n\r\n"),
]


@pytest.mark.parametrize("feed", [f for _, f in FEEDS], ids=[n for n, _ in FEEDS])
@pytest.mark.parametrize(("content", "stored"), SMUGGLING, ids=[repr(c) for c, _ in SMUGGLING])
def test_only_crlf_dot_crlf_ends_data(content: bytes, stored: bytes, feed) -> None:
    run = drive(feed(message(content) + b"QUIT\r\n"))
    assert run.content == [stored]
    assert [e for e in run.events if isinstance(e, DataEnd)] == [DataEnd(len(stored), False)]
    assert run.replies[-2:] == [QUEUED, BYE]


def test_terminator_split_before_its_lf() -> None:
    """A read ending inside ".\r\n" must not leave a stale search mark behind."""
    run = drive([TX + b"DATA\r\nx\r\n.\r", b"\n\nNOOP\r\n"])
    assert run.replies[-3:] == [QUEUED, UNRECOGNIZED, OK]


def test_data_line_ending_in_lf_is_no_terminator_start() -> None:
    """`DATA\\n.\\r\\n`: the "." line follows a bare LF, so it does not end."""
    run = drive([TX + b"DATA\n.\r\nx\r\n.\r\n"])
    assert run.content == [b".\r\nx\r\n"]


DOTS = [
    (b"..\r\n", b".\r\n"),
    (b"..x\r\n...y\r\n", b".x\r\n..y\r\n"),
    (b".x\r\n", b"x\r\n"),  # an unstuffed dot line from a sloppy client
    (b"a\r\n..\r\nb.\r\n.c\r\n", b"a\r\n.\r\nb.\r\nc\r\n"),
    (b"a.\r\n. \r\n", b"a.\r\n \r\n"),
]


@pytest.mark.parametrize("feed", [f for _, f in FEEDS], ids=[n for n, _ in FEEDS])
@pytest.mark.parametrize(("content", "stored"), DOTS, ids=[repr(c) for c, _ in DOTS])
def test_dot_unstuffing(content: bytes, stored: bytes, feed) -> None:
    run = drive(feed(message(content + b".\r\n")))
    assert run.content == [stored]


def test_content_leaves_in_large_chunks() -> None:
    body = b"".join(b"line %05d of a longish message body\r\n" % i for i in range(4000))
    body = body.replace(b"line 00", b"..dot 00")
    run = drive([message(b"")] + [body[i : i + 65536] for i in range(0, len(body), 65536)] + [b".\r\n"])
    assert len(run.chunks) <= len(body) // 65536 + 2
    assert run.content == [body.replace(b"\r\n..dot", b"\r\n.dot").replace(b"..dot", b".dot", 1)]


# -- long lines are refused without being buffered -------------------------------------


@pytest.mark.parametrize("read_size", [1, 7, 100, 5000])
def test_endless_command_line_is_refused_at_the_limit(read_size: int) -> None:
    proto = ServerProtocol(HOSTNAME, PEER, ProtocolLimits(max_line=512))
    fed = peak = 0
    while True:
        event = proto.next_event()
        if event is not NEED_DATA:
            break
        proto.receive_data(b"A" * read_size)
        fed += read_size
        peak = max(peak, len(proto._buf))
    assert event == CommandRejected("A" * 100 + "...", Reply(500, "5.5.2", "Line too long"))
    assert proto.next_event() == ConnectionClosed("line too long")
    assert fed < 512 + read_size  # refused as soon as max_line bytes were in
    assert peak < 512 + read_size
    assert proto.data_to_send() == b"500 5.5.2 Line too long\r\n"
    assert proto.should_close and len(proto._buf) == 0
    proto.receive_data(b"more")  # dropped once closed
    assert len(proto._buf) == 0


def test_endless_data_line_is_refused_at_the_limit() -> None:
    proto = ServerProtocol(HOSTNAME, PEER, ProtocolLimits(max_data_line=1000))
    run = drive([message(b"")], proto=proto)  # consumes everything, ends with eof
    assert run.events[-1] == ConnectionClosed("eof in data")
    proto = ServerProtocol(HOSTNAME, PEER, ProtocolLimits(max_data_line=1000))
    proto.receive_data(TX + b"DATA\r\n")
    while not isinstance(event := proto.next_event(), DataStart):
        if event.reply_owed:
            proto.send(accept_all(proto, event))
    proto.send(START_DATA)
    fed = 0
    while (event := proto.next_event()) is NEED_DATA:
        proto.receive_data(b"x" * 300)
        fed += 300
    assert event == ConnectionClosed("data line too long")
    assert fed == 1200
    assert proto.data_to_send().endswith(b"500 5.5.2 Line too long\r\n")


# -- misuse is a RuntimeError, and leaves the machine as it was ----------------------------------


def test_misuse() -> None:
    proto = ServerProtocol(HOSTNAME, PEER)
    proto.send_banner()
    with pytest.raises(RuntimeError):
        proto.send_banner()
    with pytest.raises(RuntimeError):
        proto.send(Reply(250, "2.0.0", "Ok"))  # nothing pending
    proto.receive_data(EHLO + MAIL + RCPT + b"DATA\r\n")
    helo = proto.next_event()
    with pytest.raises(RuntimeError):
        proto.next_event()
    with pytest.raises(RuntimeError):
        proto.send(START_DATA)  # 354 answers DATA only
    assert proto.pending is helo and proto.state is State.CONNECTED
    proto.send(proto.helo_reply(helo))
    assert proto.state is State.READY
    assert isinstance(proto.next_event(), MailFrom)
    proto.send(Reply(250, "2.0.0", "Ok"))
    assert isinstance(proto.next_event(), RcptTo)
    proto.send(Reply(250, "2.1.5", "Ok"))
    assert isinstance(proto.next_event(), DataStart)
    with pytest.raises(RuntimeError):
        proto.send(Reply(250, "2.0.0", "Ok"))  # DATA is accepted with 354 only
    assert proto.state is State.RCPT
    proto.receive_data(b"")
    with pytest.raises(RuntimeError):
        proto.receive_data(b"late")
    proto.send(START_DATA)
    assert proto.next_event() == ConnectionClosed("eof in data")
    with pytest.raises(RuntimeError):
        proto.send(Reply(421, "4.4.2", "Timeout"))  # already closed


def test_unasked_421_closes() -> None:
    proto = ServerProtocol(HOSTNAME, PEER)
    proto.send_banner()
    proto.receive_data(b"NOO")
    assert proto.next_event() is NEED_DATA
    proto.send(Reply(421, "4.4.2", "Timeout"))
    assert proto.should_close and proto.state is State.CLOSED
    assert proto.data_to_send().endswith(b"421 4.4.2 Timeout\r\n")
    assert proto.next_event() == ConnectionClosed("server sent 421")


def test_reset_is_a_notification() -> None:
    run = drive([EHLO + b"RSET\r\n"])
    assert run.events == [Helo("client.example", True), Reset(), ConnectionClosed("eof")]


def test_path_str() -> None:
    assert str(Path("alice", "example.com")) == "alice@example.com"
    assert str(Path("postmaster", "")) == "postmaster"


def test_limits_are_sane() -> None:
    with pytest.raises(ValueError):
        ProtocolLimits(max_data_line=2)
    with pytest.raises(ValueError):
        ProtocolLimits(max_rcpt=0)
