"""STARTTLS, AUTH, BDAT, DSN and SMTPUTF8 in the protocol machine (docs/smtp.md).

Each case is fed whole, byte by byte and in random splits; the driver stands
in for the TLS handshake (`tls_started`) and accepts user gilles / s3cret.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace

import pytest

from postillion.smtp.protocol import (
    Auth,
    BdatEnd,
    ConnectionClosed,
    Features,
    MailFrom,
    Path,
    ProtocolLimits,
    RcptTo,
    ServerProtocol,
    State,
)
from postillion.smtp.protocol import READY_TLS as READY_TLS_REPLY

from .driver import FEEDS, HOSTNAME, PEER, drive

EHLO = b"EHLO client.example\r\n"
HELLO = f"250-{HOSTNAME} Hello client.example [{PEER}], pleased to meet you"
BASE = ["250-PIPELINING", "250-8BITMIME", "250-ENHANCEDSTATUSCODES", "250-SIZE 36700160"]
MAIL = b"MAIL FROM:<alice@example.com>\r\n"
RCPT = b"RCPT TO:<bob@example.net>\r\n"
OK = "250 2.0.0 Ok"
RCPT_OK = "250 2.1.5 Destination address valid: Recipient ok"
QUEUED = "250 2.0.0 Message accepted for delivery"
READY_TLS = "220 2.0.0 Ready to start TLS"
AUTH_OK = "235 2.0.0 Authentication succeeded"
AUTH_FAILED = "535 5.7.8 Authentication failed"
SUBMISSION = Features(starttls=True, tls_required=True, auth=True, auth_required=True,
                      dsn=True, smtputf8=True, chunking=True)
EXTENSIONS = Features(dsn=True, smtputf8=True, chunking=True)


def ehlo(*extra: str) -> list[str]:
    return [HELLO, *BASE, *(f"250-{word}" for word in extra), "250 HELP"]


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


PLAIN_OK = b"AUTH PLAIN " + b64("\0gilles\0s3cret") + b"\r\n"
PLAIN_BAD = b"AUTH PLAIN " + b64("\0gilles\0wrong") + b"\r\n"
#: Where the client's bytes start coming over TLS: reads never straddle it.
HANDSHAKE = b"<handshake>"
TLS = EHLO + b"STARTTLS\r\n" + HANDSHAKE + EHLO
TLS_LINES = [*ehlo("DSN", "SMTPUTF8", "CHUNKING", "STARTTLS"), READY_TLS,
             *ehlo("DSN", "SMTPUTF8", "CHUNKING", "AUTH PLAIN LOGIN")]


@dataclass(frozen=True)
class Case:
    name: str
    wire: bytes
    replies: list[str]
    features: Features = SUBMISSION
    limits: ProtocolLimits = ProtocolLimits()


CASES = [
    # -- STARTTLS ---------------------------------------------------------------
    Case("starttls then ehlo omits it, offers auth", TLS, TLS_LINES),
    Case("injection after starttls is discarded", EHLO + b"STARTTLS\r\nRSET\r\nMAIL FROM:<a@b>\r\n",
         [*ehlo("DSN", "SMTPUTF8", "CHUNKING", "STARTTLS"), READY_TLS]),
    Case("second starttls", TLS + b"STARTTLS\r\n",
         [*TLS_LINES, "503 5.5.1 Bad sequence of commands: TLS already active"]),
    Case("starttls before ehlo", b"STARTTLS\r\n",
         ["503 5.5.1 Bad sequence of commands: send EHLO first"]),
    Case("starttls with argument", EHLO + b"STARTTLS now\r\n",
         [*ehlo("DSN", "SMTPUTF8", "CHUNKING", "STARTTLS"), "501 5.5.4 Syntax: STARTTLS"]),
    Case("starttls in a transaction", EHLO + MAIL + b"STARTTLS\r\n",
         [*ehlo("STARTTLS"), OK, "503 5.5.1 Bad sequence of commands: STARTTLS not allowed in a transaction"],
         Features(starttls=True)),
    Case("starttls not offered", EHLO + b"STARTTLS\r\n",
         [*ehlo(), "502 5.5.1 Command not implemented"], Features()),
    Case("tls-require: mail before starttls", EHLO + MAIL,
         [*ehlo("STARTTLS"), "530 5.7.0 Must issue a STARTTLS command first"],
         Features(starttls=True, tls_required=True)),
    # -- AUTH ------------------------------------------------------------------
    Case("auth before tls", EHLO + PLAIN_OK,
         [*ehlo("DSN", "SMTPUTF8", "CHUNKING", "STARTTLS"),
          "538 5.7.11 Encryption required for requested authentication mechanism"]),
    Case("auth required at mail", TLS + MAIL, [*TLS_LINES, "530 5.7.0 Authentication required"]),
    Case("auth plain, then mail", TLS + PLAIN_OK + MAIL + EHLO,
         [*TLS_LINES, AUTH_OK, OK, *ehlo("DSN", "SMTPUTF8", "CHUNKING")]),
    Case("auth plain with a 334", TLS + b"AUTH PLAIN\r\n" + b64("\0gilles\0s3cret") + b"\r\n",
         [*TLS_LINES, "334 ", AUTH_OK]),
    Case("auth plain authzid", TLS + b"AUTH PLAIN " + b64("gilles\0gilles\0s3cret") + b"\r\n",
         [*TLS_LINES, AUTH_OK]),
    Case("auth plain other authzid", TLS + b"AUTH PLAIN " + b64("root\0gilles\0s3cret") + b"\r\n",
         [*TLS_LINES, AUTH_FAILED]),
    Case("auth login", TLS + b"AUTH LOGIN\r\n" + b64("gilles") + b"\r\n" + b64("s3cret") + b"\r\n",
         [*TLS_LINES, "334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6", AUTH_OK]),
    Case("auth login with initial user", TLS + b"AUTH LOGIN " + b64("gilles") + b"\r\n" + b64("s3cret") + b"\r\n",
         [*TLS_LINES, "334 UGFzc3dvcmQ6", AUTH_OK]),
    Case("auth twice", TLS + PLAIN_OK + PLAIN_OK,
         [*TLS_LINES, AUTH_OK, "503 5.5.1 Bad sequence of commands: already authenticated"]),
    Case("auth bad base64", TLS + b"AUTH PLAIN !!!\r\nAUTH LOGIN\r\n%%\r\n",
         [*TLS_LINES, "501 5.5.2 Invalid base64 data", "334 VXNlcm5hbWU6", "501 5.5.2 Invalid base64 data"]),
    # Non-ASCII and invalid UTF-8 bytes anywhere in a response: refused, never raised on.
    Case("auth non-ascii initial response", TLS + b"AUTH PLAIN A\xcc\xbcsaWNl\r\n"
         b"AUTH PLAIN \xff\xfe\r\nAUTH LOGIN Z2\xc3\xa9xsZXM=\r\n" + PLAIN_OK,
         [*TLS_LINES, *["501 5.5.2 Invalid base64 data"] * 3, AUTH_OK]),
    Case("auth non-ascii continuation lines", TLS + b"AUTH PLAIN\r\n\xcc\xbc\r\nAUTH LOGIN\r\n\xff\r\n"
         b"AUTH LOGIN\r\n" + b64("gilles") + b"\r\nczNj\xc3\xa9cmV0\r\n",
         [*TLS_LINES, "334 ", "501 5.5.2 Invalid base64 data", "334 VXNlcm5hbWU6",
          "501 5.5.2 Invalid base64 data", "334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6",
          "501 5.5.2 Invalid base64 data"]),
    Case("auth decoded non-utf-8 goes to the check", TLS + b"AUTH PLAIN "
         + base64.b64encode(b"\0gill\xffes\0s3\xe9cret") + b"\r\n",
         [*TLS_LINES, AUTH_FAILED]),
    Case("auth cancelled", TLS + b"AUTH LOGIN\r\n*\r\n" + PLAIN_OK,
         [*TLS_LINES, "334 VXNlcm5hbWU6", "501 5.0.0 Authentication cancelled", AUTH_OK]),
    Case("auth unknown mechanism", TLS + b"AUTH CRAM-MD5\r\n",
         [*TLS_LINES, "504 5.5.4 Unrecognized authentication type"]),
    Case("auth failures close", TLS + PLAIN_BAD * 4,
         [*TLS_LINES, AUTH_FAILED, AUTH_FAILED, AUTH_FAILED,
          "421 4.7.0 Too many failed authentication attempts, closing connection"]),
    Case("auth response too long", TLS + b"AUTH PLAIN\r\n" + b"A" * 100 + b"\r\n",
         [*TLS_LINES, "334 ", "500 5.5.2 Line too long"], limits=ProtocolLimits(max_auth_line=64)),
    Case("auth not offered", EHLO + PLAIN_OK, [*ehlo(), "502 5.5.1 Command not implemented"], Features()),
    Case("insecure-auth", EHLO + PLAIN_OK, [*ehlo("AUTH PLAIN LOGIN"), AUTH_OK],
         Features(auth=True, insecure_auth=True)),
    # -- BDAT ------------------------------------------------------------------
    Case("bdat", EHLO + MAIL + RCPT + b"BDAT 6\r\nab\r\ncdBDAT 4 LAST\r\n.x\r\n",
         [*ehlo("DSN", "SMTPUTF8", "CHUNKING"), OK, RCPT_OK, "250 2.0.0 6 octets received", QUEUED],
         EXTENSIONS),
    Case("bdat 0 last", EHLO + MAIL + RCPT + b"BDAT 0 LAST\r\nNOOP\r\n",
         [*ehlo("DSN", "SMTPUTF8", "CHUNKING"), OK, RCPT_OK, QUEUED, OK], EXTENSIONS),
    Case("bdat without rcpt reads and drops the chunk", EHLO + b"BDAT 6\r\nNOOP\r\nNOOP\r\n",
         [*ehlo("DSN", "SMTPUTF8", "CHUNKING"), "503 5.5.1 Bad sequence of commands: need RCPT before BDAT", OK],
         EXTENSIONS),
    Case("data after bdat", EHLO + MAIL + RCPT + b"BDAT 1\r\nxDATA\r\nRSET\r\n",
         [*ehlo("DSN", "SMTPUTF8", "CHUNKING"), OK, RCPT_OK, "250 2.0.0 1 octets received",
          "503 5.5.1 Bad sequence of commands: DATA after BDAT", "250 2.0.0 Reset state"], EXTENSIONS),
    Case("bdat syntax closes", EHLO + b"BDAT ten\r\nNOOP\r\n",
         [*ehlo("DSN", "SMTPUTF8", "CHUNKING"), "501 5.5.4 Syntax: BDAT size [LAST]"], EXTENSIONS),
    Case("bdat too big", EHLO + MAIL + RCPT + b"BDAT 30\r\n" + b"x" * 30 + b"BDAT 2 LAST\r\nxx",
         [*ehlo("DSN", "SMTPUTF8", "CHUNKING"), OK, RCPT_OK, "552 5.3.4 Message too big for system",
          "503 5.5.1 Bad sequence of commands: need RCPT before BDAT"], EXTENSIONS,
         ProtocolLimits(max_message_size=20)),
    Case("bdat non-ascii digits close", EHLO + "BDAT \u00b2\r\nNOOP\r\n".encode(),
         [*ehlo("DSN", "SMTPUTF8", "CHUNKING"), "501 5.5.4 Syntax: BDAT size [LAST]"], EXTENSIONS),
    Case("bdat non-ascii last closes", EHLO + MAIL + RCPT + "BDAT 1 la\u017ft\r\nx".encode(),
         [*ehlo("DSN", "SMTPUTF8", "CHUNKING"), OK, RCPT_OK, "501 5.5.4 Syntax: BDAT size [LAST]"],
         EXTENSIONS),
    Case("bdat not offered", EHLO + b"BDAT 1 LAST\r\n", [*ehlo(), "502 5.5.1 Command not implemented"],
         Features()),
    # -- DSN, SMTPUTF8 -----------------------------------------------------------
    Case("dsn parameters", EHLO + b"MAIL FROM:<a@b> RET=HDRS ENVID=QQ+2B1\r\n"
         b"RCPT TO:<c@d> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;c+40d\r\n",
         [*ehlo("DSN", "SMTPUTF8", "CHUNKING"), OK, RCPT_OK], EXTENSIONS),
    Case("dsn bad parameters", EHLO + b"MAIL FROM:<a@b> RET=ALL\r\nMAIL FROM:<a@b> ENVID=a+0Db\r\n"
         b"MAIL FROM:<a@b> ENVID=a+zz\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d> NOTIFY=NEVER,SUCCESS\r\n"
         b"RCPT TO:<c@d> NOTIFY=DELAY,DELAY\r\nRCPT TO:<c@d> ORCPT=c@d\r\n",
         [*ehlo("DSN", "SMTPUTF8", "CHUNKING"), "501 5.5.4 Invalid parameter: RET",
          "501 5.5.4 Invalid parameter: ENVID", "501 5.5.4 Invalid parameter: ENVID", OK,
          "501 5.5.4 Invalid parameter: NOTIFY", "501 5.5.4 Invalid parameter: NOTIFY",
          "501 5.5.4 Invalid parameter: ORCPT"], EXTENSIONS),
    Case("no-dsn", EHLO + b"MAIL FROM:<a@b> RET=FULL\r\n",
         [*ehlo("SMTPUTF8"), "555 5.5.4 Unsupported parameter"], Features(smtputf8=True)),
    Case("smtputf8", EHLO + "MAIL FROM:<jörg@bücher.example> SMTPUTF8\r\nRCPT TO:<émile@d.example>\r\n".encode(),
         [*ehlo("DSN", "SMTPUTF8", "CHUNKING"), OK, RCPT_OK], EXTENSIONS),
    Case("utf-8 without smtputf8", EHLO + "MAIL FROM:<jörg@b.example>\r\nMAIL FROM:<a@b>\r\n"
         "RCPT TO:<émile@d.example>\r\n".encode(),
         [*ehlo("DSN", "SMTPUTF8", "CHUNKING"), "553 5.6.7 Non-ASCII address requires SMTPUTF8", OK,
          "553 5.6.7 Non-ASCII address requires SMTPUTF8"], EXTENSIONS),
    Case("smtputf8 still checks the shape", EHLO + "MAIL FROM:<jö..rg@b> SMTPUTF8\r\n".encode()
         + "MAIL FROM:<jö\u2028rg@b> SMTPUTF8\r\n".encode(),
         [*ehlo("DSN", "SMTPUTF8", "CHUNKING"), "553 5.1.7 Sender address syntax error",
          "553 5.1.7 Sender address syntax error"], EXTENSIONS),
    # A UTF-8 domain must be writable in valid A-labels, as lookups will see it:
    # fullwidth ｘｎ-- becomes xn--, ⿰ is prohibited, Arabic then Latin breaks
    # the bidi rule, an xn-- label must be ASCII, ＠ becomes @, 60 ü are too long.
    Case("smtputf8 domains", EHLO + "MAIL FROM:<jörg@BÜCHER.example> SMTPUTF8\r\n"
         "RCPT TO:<a@faß.de>\r\nRCPT TO:<a@bücher.xn--zz>\r\n"
         "RCPT TO:<a@ｘｎ--zz.example>\r\nRCPT TO:<a@b\u2ff0ü.example>\r\nRCPT TO:<a@\u0627a.example>\r\n"
         "RCPT TO:<a@xn--ü.example>\r\nRCPT TO:<a@ü＠b.example>\r\n"
         f"RCPT TO:<a@{'ü' * 60}.example>\r\n".encode(),
         [*ehlo("DSN", "SMTPUTF8", "CHUNKING"), OK, RCPT_OK,
          *["501 5.1.3 Recipient address syntax error"] * 7], EXTENSIONS),
]


# An injection case only means something when the injected bytes arrive in
# the same read as STARTTLS: those cases are fed whole only.
CASE_FEEDS = [pytest.param(case, feed, id=f"{case.name}-{name}")
              for case in CASES for name, feed in FEEDS
              if not case.name.startswith("injection") or feed is FEEDS[0][1]]


@pytest.mark.parametrize("case,feed", CASE_FEEDS)
def test_extension_case(case: Case, feed) -> None:
    if case.limits.max_message_size != ProtocolLimits().max_message_size:
        case = replace(case, replies=[r.replace("SIZE 36700160", f"SIZE {case.limits.max_message_size}")
                                      for r in case.replies])
    reads = [read for part in case.wire.split(HANDSHAKE) for read in feed(part)]
    run = drive(reads, case.limits, features=case.features)
    assert run.replies[1:] == case.replies


def test_auth_event_hides_the_password() -> None:
    run = drive([EHLO + PLAIN_OK], features=Features(auth=True, insecure_auth=True))
    auth = [e for e in run.events if isinstance(e, Auth)]
    assert auth == [Auth("PLAIN", "gilles", "s3cret", "")]
    assert "s3cret" not in repr(auth[0])


def test_refused_auth_line_never_logs_the_response() -> None:
    run = drive([EHLO + PLAIN_OK], features=SUBMISSION)  # 538: not on TLS
    logged = [e.command for e in run.events if type(e).__name__ == "CommandRejected"]
    assert logged == ["AUTH PLAIN (...)"]


def test_bdat_events_and_content() -> None:
    run = drive([EHLO + MAIL + RCPT + b"BDAT 7\r\nab\rc\nd\rBDAT 3 LAST\r\n\n.."], features=EXTENSIONS)
    assert b"".join(run.content) == b"ab c\r\nd\r\n.."  # CR held across chunks, no unstuffing
    ends = [e for e in run.events if isinstance(e, BdatEnd)]
    assert ends == [BdatEnd(7, 7, False, False), BdatEnd(3, 11, True, False)]


def test_smtputf8_events() -> None:
    wire = EHLO + "MAIL FROM:<jörg@bücher.example> SMTPUTF8\r\nRCPT TO:<@r.example:émile@d.example>\r\n".encode()
    run = drive([wire], features=EXTENSIONS)
    assert [e for e in run.events if isinstance(e, (MailFrom, RcptTo))] == [
        MailFrom(Path("jörg", "bücher.example"), {"SMTPUTF8": ""}), RcptTo(Path("émile", "d.example"), {})]


def test_tls_state_guards() -> None:
    proto = ServerProtocol(HOSTNAME, PEER, features=SUBMISSION)
    proto.send_banner()
    with pytest.raises(RuntimeError):
        proto.tls_started()
    proto.receive_data(EHLO + b"STARTTLS\r\nQUIT\r\n")
    proto.send(proto.helo_reply(proto.next_event()))
    proto.next_event()
    proto.send(READY_TLS_REPLY)
    assert proto.state is State.TLS and proto.buffered == 0
    proto.receive_data(b"NOOP\r\n")  # plaintext while waiting: dropped
    with pytest.raises(RuntimeError):
        proto.next_event()
    proto.tls_started()
    assert proto.tls and proto.buffered == 0 and proto.state is State.CONNECTED
    proto.receive_data(b"")
    assert isinstance(proto.next_event(), ConnectionClosed)


def test_rejected_recipients_close_the_session() -> None:
    from postillion.errors import Reply
    from .driver import accept_all

    def refuse_rcpt(proto, event):
        if isinstance(event, RcptTo):
            code = 451 if event.rcpt.local == "temp" else 550
            return Reply(code, f"{code // 100}.1.1", "Invalid recipient")
        return accept_all(proto, event)

    wire = EHLO + MAIL + b"RCPT TO:<temp@x>\r\n" * 3 + b"RCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\nNOOP\r\n"
    run = drive([wire], ProtocolLimits(max_rejected_rcpt=2), refuse_rcpt)
    assert run.replies[-3:] == ["550 5.1.1 Invalid recipient", "550 5.1.1 Invalid recipient",
                                "421 4.7.0 Too many rejected recipients, closing connection"]



def phases(reads: list[bytes]) -> list[int | None]:
    """`content_phase` each time the machine asks for bytes (what the
    session sees), runs of the same value collapsed."""
    proto = ServerProtocol(HOSTNAME, PEER, features=EXTENSIONS)
    seen: list[int | None] = []

    def feed():
        for read in reads:
            seen.append(proto.content_phase)
            yield read
        seen.append(proto.content_phase)

    drive(feed(), proto=proto)
    return [p for i, p in enumerate(seen) if i == 0 or p != seen[i - 1]]


def test_content_phase_of_data() -> None:
    """DATA: from the 354 to the end of data; each message its own phase."""
    wire = EHLO + MAIL + RCPT + b"DATA\r\nx\r\n.\r\n" + MAIL + RCPT + b"DATA\r\n.\r\n"
    assert phases([wire[i : i + 1] for i in range(len(wire))]) == [None, 1, None, 2, None]


def test_content_phase_of_bdat() -> None:
    """BDAT: one phase from the first chunk to LAST, the BDAT lines between
    chunks included; the next transaction's chunks are another phase, even
    when no read comes between the two (pipelined)."""
    one = EHLO + MAIL + RCPT + b"BDAT 1\r\nxBDAT 2\r\nyzBDAT 1 LAST\r\nz"
    two = MAIL + RCPT + b"BDAT 3 LAST\r\nabc"
    wire = one + two
    assert phases([wire[i : i + 1] for i in range(len(wire))]) == [None, 1, None, 2, None]
    assert phases([one[:-1], one[-1:] + two[:-1], two[-1:]]) == [None, 1, 2, None]
