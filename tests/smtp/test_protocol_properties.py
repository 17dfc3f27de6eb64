"""Properties of the protocol machine for any input (Hypothesis).

(a) How the bytes are cut into reads never changes the replies or events.
(b) Driven correctly, the machine never raises, never asks for more data with
    a full buffer, never hands out more than max_message_size octets of one
    message, only hands out CRLF-only content, and never reports more ends of
    data than CRLF.CRLF sequences it was sent.
(c) Whatever line comes in whatever state -- non-ASCII text, invalid UTF-8,
    control bytes, in a command, an AUTH response, a BDAT chunk or DATA --
    the machine answers or closes, never raises, and never echoes a byte
    that is not ASCII.
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from postillion.errors import Reply
from postillion.smtp.protocol import (
    START_DATA,
    BdatEnd,
    ConnectionClosed,
    DataChunk,
    DataEnd,
    DataStart,
    Event,
    Features,
    MailFrom,
    ProtocolLimits,
    ServerProtocol,
    State,
    VERBS,
)

from .driver import accept_all, drive

LIMITS = ProtocolLimits(
    max_line=64, max_data_line=80, max_message_size=200, max_rcpt=2, max_mails=3, max_failed_commands=6
)

# Pieces of real dialogue, so random streams get past EHLO/MAIL/RCPT into DATA,
# plus the line-end and dot fragments smuggling is made of.
TOKENS = [
    b"EHLO client.example\r\n", b"HELO x\n", b"MAIL FROM:<a@b.example>\r\n", b"MAIL FROM:<>\r\n",
    b"MAIL FROM:<a@b> SIZE=999999\r\n", b"RCPT TO:<c@d.example>\r\n", b"RCPT TO:<postmaster>\n",
    b"DATA\r\n", b"DATA\n", b"RSET\r\n", b"NOOP\r\n", b"QUIT\r\n", b"VRFY root\r\n", b"GET / HTTP/1.1\r\n",
    b".\r\n", b"..\r\n", b"\r\n", b"\n", b"\r", b".", b"..", b"\r\n.\r\n", b"\n.\n", b"\r.\r\n",
    b"x" * 30, b"y" * 79, b"\x00", b"\xff", b"j\xc3\xb6rg",
]
# Whole transaction openers, so that most streams carry message content.
OPENERS = [
    b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n",
    b"MAIL FROM:<>\r\nRCPT TO:<c@d.example>\r\nRCPT TO:<e@f>\r\nRCPT TO:<g@h>\r\nDATA\r\n",
    b"HELO x\nMAIL FROM:<a@b>\nRCPT TO:<c@d>\nDATA\n",
]
SEGMENTS = st.one_of(
    st.sampled_from(OPENERS), st.sampled_from(TOKENS), st.binary(max_size=24), st.just(b"\r\n.\r\n")
)
STREAMS = st.builds(
    lambda first, rest: first + b"".join(rest), st.sampled_from([b"", *OPENERS]), st.lists(SEGMENTS, max_size=60)
)
ANSWERS = st.lists(st.sampled_from(["accept", "accept", "accept", "451", "550", "421"]), max_size=30)

OK_SEQUENCES = [
    b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r",
    b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\n.\r\n.\n\r\n.\r\n",
]


def scripted(answers: list[str]):
    """An answerer that follows a script, then accepts: deterministic per run."""
    script = iter(answers)

    def answer(proto: ServerProtocol, event: Event) -> Reply:
        choice = next(script, "accept")
        if choice == "accept":
            return accept_all(proto, event)
        code = int(choice)
        return Reply(code, f"{code // 100}.0.0", "Refused by script")

    return answer


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted({p % (len(stream) + 1) for p in points}), len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


@settings(deadline=None, max_examples=300)
@given(stream=STREAMS, points=st.lists(st.integers(min_value=0, max_value=10_000), max_size=60),
       answers=ANSWERS)
@example(stream=OK_SEQUENCES[0] + b"\nQUIT\r\n", points=[len(OK_SEQUENCES[0])], answers=[])
@example(stream=OK_SEQUENCES[1], points=list(range(40, 60)), answers=[])
@example(stream=OK_SEQUENCES[0] + b"\n\nNOOP\r\n", points=[len(OK_SEQUENCES[0])], answers=[])
def test_reads_do_not_matter(stream: bytes, points: list[int], answers: list[str]) -> None:
    one = drive([stream], LIMITS, scripted(answers))
    many = drive(cut(stream, points), LIMITS, scripted(answers))
    assert many.events == one.events
    assert many.output == one.output


@settings(deadline=None, max_examples=100)
@given(stream=STREAMS)
def test_bytewise_is_the_same(stream: bytes) -> None:
    one = drive([stream], LIMITS)
    many = drive([stream[i : i + 1] for i in range(len(stream))], LIMITS)
    assert (many.events, many.output) == (one.events, one.output)


def check_invariants(stream: bytes, reads: list[bytes], answers: list[str]) -> None:
    run = drive(reads, LIMITS, scripted(answers))  # asserts buffer bounds on the way
    assert isinstance(run.events[-1], ConnectionClosed)
    ends = [e for e in run.events if isinstance(e, DataEnd)]
    assert len(ends) <= stream.count(b"\r\n.\r\n")
    for chunk in run.chunks:
        assert chunk and chunk.endswith(b"\r\n")
        assert chunk.count(b"\r") == chunk.count(b"\n") == chunk.count(b"\r\n")
    for content in run.content:
        assert len(content) <= LIMITS.max_message_size
    starts = sum(isinstance(e, DataStart) for e in run.events)
    assert len(ends) <= starts <= stream.upper().count(b"DATA")


@settings(deadline=None, max_examples=300)
@given(stream=STREAMS, points=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
       answers=ANSWERS)
def test_invariants_on_dialogue_like_bytes(stream: bytes, points: list[int], answers: list[str]) -> None:
    check_invariants(stream, cut(stream, points), answers)


@settings(deadline=None, max_examples=200)
@given(reads=st.lists(st.binary(max_size=200), max_size=20), answers=ANSWERS)
def test_invariants_on_any_bytes(reads: list[bytes], answers: list[str]) -> None:
    check_invariants(b"".join(reads), [r for r in reads if r], answers)


@settings(deadline=None, max_examples=200)
@given(content=st.lists(st.sampled_from(TOKENS[14:]) | st.binary(max_size=12), max_size=40))
def test_content_never_ends_early(content: list[bytes]) -> None:
    """Whatever a message contains, it ends exactly at the first CRLF.CRLF,
    counting the CRLF that ended the DATA line."""
    body = b"".join(content)
    stream = b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n" + body
    limits = ProtocolLimits(max_data_line=10_000, max_message_size=10**6)
    run = drive([stream], limits)
    ends = [e for e in run.events if isinstance(e, DataEnd)]
    terminated = (b"\r\n" + body).find(b"\r\n.\r\n") >= 0
    assert len(ends) == (1 if terminated else 0)
    assert DataStart() in run.events and START_DATA.to_bytes() in bytes(run.output)


# -- every extension on: STARTTLS, AUTH, BDAT, DSN, SMTPUTF8 -----------------------

ALL = Features(starttls=True, auth=True, insecure_auth=True, dsn=True, smtputf8=True, chunking=True)
EXT_LIMITS = ProtocolLimits(max_line=64, max_data_line=80, max_message_size=200, max_rcpt=2,
                            max_mails=3, max_failed_commands=6, max_auth_line=48, max_failed_auth=2)
EXT_TOKENS = TOKENS + [
    b"STARTTLS\r\n", b"STARTTLS\r\nRSET\r\n", b"AUTH PLAIN AGdpbGxlcwBzM2NyZXQ=\r\n", b"AUTH PLAIN\r\n",
    b"AGdpbGxlcwB4\r\n", b"AUTH LOGIN\r\n", b"Z2lsbGVz\r\n", b"czNjcmV0\r\n", b"*\r\n", b"!!\r\n",
    b"BDAT 5\r\n", b"BDAT 3 LAST\r\n", b"BDAT 0 LAST\r\n", b"BDAT x\r\n", b"abcde", b"\r\n.\r\n",
    b"MAIL FROM:<j\xc3\xb6rg@b.example> SMTPUTF8 RET=HDRS ENVID=a+2Bb\r\n",
    b"RCPT TO:<c@d> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c@d\r\n", b"RCPT TO:<\xc3\xa9@d>\r\n",
    b"RCPT TO:<c@xn--zz>\r\n", b"RCPT TO:<c@xn--bcher-kva.example>\r\n",
]
#: Non-ASCII text and bytes that are not UTF-8, with the characters that
#: fool str methods: a combining mark, "²" (isdigit), "ſ" and "K" (upper/lower
#: onto ASCII), "İ" (lower grows), Arabic digits, fullwidth forms, a lone
#: surrogate's encoding, a truncated sequence, bytes never in UTF-8.
NON_ASCII = [
    b"\xcc\xbc", b"\xc3\xa9", b"\xc2\xb2", b"\xc5\xbf", "\u212a".encode(), "\u0130".encode(),
    "\u0661\u0662".encode(), "\uff58\uff4e--".encode(), "\uff20".encode(), "\u2028".encode(),
    b"\xf0\x9f\x92\xa9", b"\xed\xa0\x80", b"\xc3", b"\xff", b"\xfe\xff", b"\x80",
]
#: Command lines without their end, so that what follows lands in the argument.
LINE_HEADS = [
    b"AUTH PLAIN ", b"AUTH LOGIN ", b"AUTH ", b"MAIL FROM:<", b"RCPT TO:<", b"BDAT ", b"BDAT 1 ",
    b"EHLO ", b"HELO ", b"NOOP ", b"a@xn--", b"@", b">", b" SMTPUTF8", b" SIZE=", b" NOTIFY=",
]
EXT_TOKENS += NON_ASCII + LINE_HEADS
EXT_SEGMENTS = st.one_of(st.sampled_from(OPENERS), st.sampled_from(EXT_TOKENS), st.binary(max_size=24))
EXT_STREAMS = st.builds(lambda first, rest: first + b"".join(rest), st.sampled_from([b"", *OPENERS]),
                        st.lists(EXT_SEGMENTS, max_size=60))


@settings(deadline=None, max_examples=300)
@given(stream=EXT_STREAMS, points=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
       answers=ANSWERS)
@example(stream=b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 5\r\n\r\n.\r\nBDAT 0 LAST\r\n",
         points=[], answers=[])
# Found once the alphabet had non-ASCII text: the machine raised on both.
@example(stream=b"EHLO c\r\nAUTH PLAIN A\xcc\xbcsaWNl\r\n", points=[], answers=[])
@example(stream=b"EHLO c\r\nBDAT \xc2\xb2\r\n", points=[], answers=[])
def test_extension_invariants(stream: bytes, points: list[int], answers: list[str]) -> None:
    """Never raises, buffers bounded (asserted by drive), never more messages
    than terminators: DATA ends <= CRLF.CRLF, BDAT ends <= LAST keywords."""
    run = drive(cut(stream, points), EXT_LIMITS, scripted(answers), features=ALL)
    assert isinstance(run.events[-1], ConnectionClosed)
    data_ends = [e for e in run.events if isinstance(e, DataEnd)]
    last_ends = [e for e in run.events if isinstance(e, BdatEnd) and e.last]
    assert len(data_ends) <= stream.count(b"\r\n.\r\n")
    assert len(last_ends) <= stream.upper().count(b" LAST")
    for chunk in run.chunks:
        assert chunk and chunk.count(b"\r") == chunk.count(b"\n") == chunk.count(b"\r\n")
    for content in run.content:
        assert len(content) <= EXT_LIMITS.max_message_size
    for event in run.events:
        if isinstance(event, MailFrom) and event.sender is not None:
            assert not any(ord(c) < 0x20 for c in str(event.sender))


NO_TLS_SEGMENTS = st.one_of(st.sampled_from(OPENERS), st.binary(max_size=24),
                            st.sampled_from([t for t in EXT_TOKENS if b"STARTTLS" not in t]))
NO_TLS_STREAMS = st.builds(lambda first, rest: first + b"".join(rest), st.sampled_from([b"", *OPENERS]),
                           st.lists(NO_TLS_SEGMENTS, max_size=60))


@settings(deadline=None, max_examples=200)
@given(stream=NO_TLS_STREAMS, points=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
       answers=ANSWERS)
def test_extension_reads_do_not_matter(stream: bytes, points: list[int], answers: list[str]) -> None:
    """AUTH dialogues and BDAT chunks come out the same however the bytes
    are cut into reads (STARTTLS aside: there the cut is the point)."""
    features = Features(auth=True, insecure_auth=True, dsn=True, smtputf8=True, chunking=True)
    one = drive([stream], EXT_LIMITS, scripted(answers), features=features)
    many = drive(cut(stream, points), EXT_LIMITS, scripted(answers), features=features)
    assert many.output == one.output
    assert b"".join(many.chunks) == b"".join(one.chunks)
    assert [e for e in many.events if not isinstance(e, DataChunk)] == \
        [e for e in one.events if not isinstance(e, DataChunk)]


# -- (c) any line in any state ---------------------------------------------------

#: AUTH only once TLS is up, as on a submission port: the state the AUTH bug hid in.
STATE_FEATURES = Features(starttls=True, auth=True, dsn=True, smtputf8=True, chunking=True)
_TX = b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"
_TLS = b"EHLO c\r\nSTARTTLS\r\n"  # a read of its own: the rest of its read is dropped
#: Reads that bring a machine accepting everything into each state, and the
#: state it is then in.
STATES: dict[str, tuple[list[bytes], State]] = {
    "connected": ([], State.CONNECTED),
    "ready": ([b"EHLO c\r\n"], State.READY),
    "mail": ([b"EHLO c\r\nMAIL FROM:<a@b>\r\n"], State.MAIL),
    "rcpt": ([_TX], State.RCPT),
    "data": ([_TX + b"DATA\r\n"], State.DATA),
    "in a bdat chunk": ([_TX + b"BDAT 9\r\n"], State.RCPT),
    "between bdat chunks": ([_TX + b"BDAT 1\r\nx"], State.BDAT),
    "tls": ([_TLS, b"EHLO c\r\n"], State.READY),
    "auth plain response": ([_TLS, b"EHLO c\r\nAUTH PLAIN\r\n"], State.AUTH),
    "auth login user": ([_TLS, b"EHLO c\r\nAUTH LOGIN\r\n"], State.AUTH),
    "auth login password": ([_TLS, b"EHLO c\r\nAUTH LOGIN\r\nZ2lsbGVz\r\n"], State.AUTH),
    "authenticated": ([_TLS, b"EHLO c\r\nAUTH PLAIN AGdpbGxlcwBzM2NyZXQ=\r\n"], State.READY),
}
HEADS = st.sampled_from([verb.encode() + b" " for verb in VERBS] + LINE_HEADS + [b"", b"mail from:<"])
WORDS = st.one_of(
    st.sampled_from(NON_ASCII),
    # Numbers in any script: str.isdigit() says yes to some that int() refuses.
    st.text(st.characters(categories=["Nd", "No", "Nl"], min_codepoint=0x80), min_size=1,
            max_size=3).map(str.encode),
    st.text(max_size=8).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=8),
    st.sampled_from([b"<", b">", b"@", b" ", b":", b"=", b"*", b"LAST", b"SMTPUTF8", b"xn--zz",
                     b"AGdpbGxlcwBzM2NyZXQ=", b"Z2lsbGVz", b"3", b"\r\n.\r\n"]),
)
LINES = st.builds(lambda head, words, sep, end: head + sep.join(words) + end, HEADS,
                  st.lists(WORDS, max_size=4), st.sampled_from([b"", b" "]),
                  st.sampled_from([b"\r\n", b"\n", b""]))


@settings(deadline=None, max_examples=400)
@given(state=st.sampled_from(sorted(STATES)), lines=st.lists(LINES, min_size=1, max_size=6),
       points=st.lists(st.integers(min_value=0, max_value=10_000), max_size=6), answers=ANSWERS)
@example(state="tls", lines=[b"AUTH PLAIN A\xcc\xbcsaWNl\r\n"], points=[], answers=[])
@example(state="rcpt", lines=[b"BDAT \xc2\xb2\r\n"], points=[], answers=[])
@example(state="auth login user", lines=[b"\xcc\xbc\r\n"], points=[], answers=[])
@example(state="tls", lines=[b"AUTH LOGIN Z2\xc3\xa9xsZXM=\r\n"], points=[], answers=[])
def test_any_line_in_any_state(state: str, lines: list[bytes], points: list[int],
                               answers: list[str]) -> None:
    setup, expected = STATES[state]
    proto = ServerProtocol("mx.example.org", "192.0.2.7", EXT_LIMITS, STATE_FEATURES)
    reached: list[State] = []
    script = scripted(answers)

    def answer(proto: ServerProtocol, event: Event) -> Reply:
        # Accept the setup, then follow the script.
        return script(proto, event) if reached else accept_all(proto, event)

    def reads():
        yield from setup
        reached.append(proto.state)
        yield from cut(b"".join(lines), points)

    run = drive(reads(), EXT_LIMITS, answer, proto=proto)
    assert reached == [expected]
    assert isinstance(run.events[-1], ConnectionClosed)
    assert bytes(run.output).isascii()
