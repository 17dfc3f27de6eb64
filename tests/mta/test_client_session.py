"""The SMTP/LMTP client session against real peers on loopback.

The real daemon in-process (`secure_uvloop`: STARTTLS, SMTPS, submission
with AUTH, a trustme CA) is the peer for delivery, TLS and AUTH; small
scripted servers (tests/mta/peers.py) play LMTP, count pipelined writes,
and misbehave: endless continuation lines, a 10 MB line, a stall after
DATA, data sent with the STARTTLS 220, mixed codes, garbage.  Every test
runs with short timeouts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import ssl
import tracemalloc

import pytest
import trustme

from postillion.config.model import RelayHost
from postillion.mta.protocol import ClientLimits, Outcome, Recipient, Transaction
from postillion.mta.session import ClientConfig, Phase, RouteError, open_session
from postillion.table.values import Credentials

from ..e2e.conftest import HOSTNAME, free_port
from ..e2e.inproc import PASSWORD, USER
from .peers import Conn, Peer, dialogue, ehlo_reply

FAST = ClientLimits(connect_timeout=5, tls_timeout=5, reply_timeout=5, data_end_timeout=5,
                    send_timeout=5, quit_timeout=2)
#: A short wait where the test makes the peer stall; the other waits stay
#: long enough for a loaded machine.
SHORT = ClientLimits(connect_timeout=5, tls_timeout=5, reply_timeout=5, data_end_timeout=0.3,
                     send_timeout=0.5, quit_timeout=1)
MESSAGE = b"Subject: relayed\r\nFrom: gilles@example.test\r\n\r\nhello\r\n.dot line\r\n"


def tx(*rcpts: str, sender: str = f"{USER}@example.test") -> Transaction:
    return Transaction(sender, tuple(Recipient(r) for r in rcpts))


def config(port: int, **fields) -> ClientConfig:
    fields.setdefault("limits", FAST)
    fields.setdefault("helo", "client.example.net")
    return ClientConfig(host="127.0.0.1", port=port, **fields)


def outcomes(result) -> list[tuple[str, Outcome, int]]:
    return [(r.recipient.address, r.outcome, r.reply.code) for r in result.recipients]


# -- against the real daemon --------------------------------------------------

async def test_submission_starttls_auth_several_recipients(secure_uvloop, tmp_path):
    """STARTTLS required and verified against the CA, AUTH PLAIN, one message
    to three recipients of which one is unknown: 550 for that one only."""
    proc = secure_uvloop
    cfg = config(proc.ports["submission"], scheme="smtp+tls", ca_file=str(tmp_path / "ca.crt"),
                 credentials=Credentials(USER, PASSWORD))
    session = await open_session(cfg)
    async with session:
        assert session.tls is not None and session.tls[1] == "YES"
        assert session.proto.extensions.pipelining and session.proto.extensions.dsn
        result = await session.send(
            tx("alice@example.test", "nobody@example.test", "bob@example.test"), io.BytesIO(MESSAGE))
        assert outcomes(result) == [("alice@example.test", Outcome.OK, 250),
                                    ("nobody@example.test", Outcome.PERMFAIL, 550),
                                    ("bob@example.test", Outcome.OK, 250)]
        assert result.recipients[1].reply.enhanced == "5.1.1" and result.recipients[1].from_peer
        # A second message on the same session, after the refused recipient.
        again = await session.send(tx("alice@example.test"), io.BytesIO(MESSAGE))
        assert outcomes(again) == [("alice@example.test", Outcome.OK, 250)]
        assert session.messages == 2 and session.usable
    for user, count in (("alice", 2), ("bob", 1)):
        files = await asyncio.to_thread(proc.wait_delivered, user, count)
        body = files[0].read_bytes()
        assert b"\n.dot line\n" in body and b"\n..dot" not in body   # unstuffed once, as sent
    log = await asyncio.to_thread(proc.wait_log, f"smtp authentication user={USER} result=ok")
    assert "smtp tls" in log


async def test_auth_wrong_password_is_a_temporary_route_error(secure_uvloop):
    proc = secure_uvloop
    cfg = config(proc.ports["submission"], scheme="smtp+tls", tls_context=proc.client_context(),
                 credentials=Credentials(USER, "wrong"))
    with pytest.raises(RouteError) as caught:
        await open_session(cfg)
    error = caught.value
    assert error.phase is Phase.AUTH and "AUTH rejected: 535" in error.reason
    assert error.reply.code == 451 and error.peer_reply is not None and error.peer_reply.code == 535


async def test_certificate_of_another_ca_is_refused(secure_uvloop):
    proc = secure_uvloop
    other = ssl.create_default_context()
    trustme.CA().configure_trust(other)
    for scheme, port in (("smtp+tls", "submission"), ("smtps", "smtps")):
        cfg = config(proc.ports[port], scheme=scheme, tls_context=other,
                     credentials=Credentials(USER, PASSWORD))
        with pytest.raises(RouteError) as caught:
            await open_session(cfg)
        assert caught.value.phase is Phase.TLS
        assert "Certificate verification failed" in caught.value.reason


async def test_certificate_name_is_checked(secure_uvloop):
    proc = secure_uvloop
    ok = config(proc.ports["mx"], scheme="smtp+tls", tls_context=proc.client_context(),
                server_name=HOSTNAME)
    async with await open_session(ok) as session:
        assert session.tls is not None and session.tls[1] == "YES"
    wrong = config(proc.ports["mx"], scheme="smtp+tls", tls_context=proc.client_context(),
                   server_name="other.example.test")
    with pytest.raises(RouteError, match="Certificate verification failed"):
        await open_session(wrong)


async def test_smtps_with_auth(secure_uvloop):
    proc = secure_uvloop
    cfg = config(proc.ports["smtps"], scheme="smtps", tls_context=proc.client_context(),
                 credentials=Credentials(USER, PASSWORD))
    async with await open_session(cfg) as session:
        result = await session.send(tx("bob@example.test"), io.BytesIO(MESSAGE))
        assert outcomes(result) == [("bob@example.test", Outcome.OK, 250)]
    await asyncio.to_thread(proc.wait_delivered, "bob")


async def test_tls_required_but_not_offered(secure_uvloop):
    proc = secure_uvloop
    for scheme in ("smtp+tls", "ssl"):
        with pytest.raises(RouteError, match="TLS required but not offered") as caught:
            await open_session(config(proc.ports["plain"], scheme=scheme))
        assert caught.value.phase is Phase.TLS


async def test_opportunistic_tls_is_not_verified(secure_uvloop):
    """smtp://: STARTTLS when offered, whoever signed the certificate."""
    proc = secure_uvloop
    async with await open_session(config(proc.ports["mx"], scheme="smtp")) as session:
        assert session.tls is not None and session.tls[1] == "NO"
        result = await session.send(tx("alice@example.test", sender="someone@example.org"),
                                    io.BytesIO(MESSAGE))
        assert outcomes(result) == [("alice@example.test", Outcome.OK, 250)]
    async with await open_session(config(proc.ports["mx"], scheme="smtp+notls")) as session:
        assert session.tls is None


async def test_no_auth_without_tls(secure_uvloop):
    proc = secure_uvloop
    cfg = config(proc.ports["plain"], scheme="smtp", credentials=Credentials(USER, PASSWORD))
    with pytest.raises(RouteError, match="AUTH not possible without TLS") as caught:
        await open_session(cfg)
    assert caught.value.phase is Phase.AUTH


async def test_message_above_peer_size_is_not_sent(secure_uvloop):
    proc = secure_uvloop
    proc.set_limits(max_message_size=1000)
    async with await open_session(config(proc.ports["plain"], scheme="smtp+notls")) as session:
        assert session.proto.extensions.size == 1000
        result = await session.send(tx("alice@example.test"), io.BytesIO(b"x" * 2000 + b"\r\n"))
        [refused] = result.recipients
        assert (refused.outcome, refused.reply.code, refused.reply.enhanced, refused.from_peer) == (
            Outcome.PERMFAIL, 552, "5.3.4", False)
        assert session.usable
        ok = await session.send(tx("alice@example.test"), io.BytesIO(b"small\r\n"))
        assert outcomes(ok) == [("alice@example.test", Outcome.OK, 250)]
    assert len(await asyncio.to_thread(proc.wait_delivered, "alice")) == 1


def test_config_for_relay():
    relay = RelayHost("smtp+tls", "[IPv6:::1]", 2525, "label")
    cfg = ClientConfig.for_relay(relay, helo="me.example")
    assert (cfg.host, cfg.port, cfg.scheme, cfg.server_name, cfg.helo) == (
        "::1", 2525, "smtp+tls", "", "me.example")
    cfg = ClientConfig.for_relay(RelayHost("smtps", "relay.example.net"), "192.0.2.1")
    assert (cfg.host, cfg.port, cfg.server_name) == ("192.0.2.1", None, "relay.example.net")
    with pytest.raises(ValueError, match="lmtp needs a port"):
        ClientConfig(host="127.0.0.1", scheme="lmtp")
    with pytest.raises(ValueError, match="unknown relay scheme"):
        ClientConfig(host="127.0.0.1", scheme="tls+auth")


async def test_connection_refused_is_a_connect_error():
    with pytest.raises(RouteError) as caught:
        await open_session(config(free_port(), scheme="smtp"))
    assert caught.value.phase is Phase.CONNECT and caught.value.reply.enhanced == "4.4.1"


# -- scripted peers -----------------------------------------------------------

async def test_pipelining_sends_the_group_in_one_write():
    async with Peer(lambda c: dialogue(c, keywords=("PIPELINING", "SIZE 100000"))) as peer:
        async with await open_session(config(peer.port, scheme="smtp+notls")) as session:
            result = await session.send(tx("a@x.test", "b@x.test", "c@x.test"), io.BytesIO(MESSAGE))
            assert [r.outcome for r in result.recipients] == [Outcome.OK] * 3
        conn = peer.conns[0]
        [group] = [r for r in conn.reads if r.startswith(b"MAIL FROM")]
        assert group == (b"MAIL FROM:<gilles@example.test> SIZE=%d\r\n" % len(MESSAGE)
                         + b"RCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n")


async def test_without_pipelining_one_command_per_round_trip():
    async with Peer(lambda c: dialogue(c, keywords=("8BITMIME",))) as peer:
        async with await open_session(config(peer.port, scheme="smtp+notls")) as session:
            result = await session.send(tx("a@x.test", "b@x.test"), io.BytesIO(MESSAGE))
            assert [r.outcome for r in result.recipients] == [Outcome.OK] * 2
        reads = peer.conns[0].reads
        assert b"MAIL FROM:<gilles@example.test>\r\n" in reads
        assert b"RCPT TO:<a@x.test>\r\n" in reads and b"RCPT TO:<b@x.test>\r\n" in reads
        assert b"DATA\r\n" in reads


async def test_several_messages_reset_between_failures():
    def rcpt(address: str) -> str:
        return "550 5.1.1 unknown\r\n" if address.startswith("bad") else "250 2.1.5 ok\r\n"

    async with Peer(lambda c: dialogue(c, keywords=("PIPELINING",), rcpt=rcpt)) as peer:
        async with await open_session(config(peer.port, scheme="smtp+notls")) as session:
            first = await session.send(tx("a@x.test"), io.BytesIO(MESSAGE))
            second = await session.send(tx("bad@x.test"), io.BytesIO(MESSAGE))
            third = await session.send(tx("b@x.test", "bad2@x.test"), io.BytesIO(MESSAGE))
        assert outcomes(first) == [("a@x.test", Outcome.OK, 250)]
        assert outcomes(second) == [("bad@x.test", Outcome.PERMFAIL, 550)]
        assert outcomes(third) == [("b@x.test", Outcome.OK, 250), ("bad2@x.test", Outcome.PERMFAIL, 550)]
        verbs = [line.split()[0] for line in peer.conns[0].lines]
        assert verbs == ["EHLO", "MAIL", "RCPT", "DATA", "MAIL", "RCPT", "DATA",
                         "RSET", "MAIL", "RCPT", "RCPT", "DATA", "QUIT"]
        assert len(peer.conns[0].messages) == 2


async def test_large_message_streams_stuffed():
    """300 KiB with dot lines and bare LFs: what arrives unstuffs to the
    message with CRLF line ends."""
    lines = [b".leading dot %d" % i if i % 7 == 0 else b"line %d" % i for i in range(20000)]
    message = b"Subject: big\n\n" + b"\n".join(lines) + b"\n"
    assert len(message) > 200 * 1024
    async with Peer(lambda c: dialogue(c, keywords=("PIPELINING", "SIZE 0"))) as peer:
        cfg = config(peer.port, scheme="smtp+notls",
                     limits=ClientLimits(reply_timeout=5, data_end_timeout=5, chunk_size=4096))
        async with await open_session(cfg) as session:
            result = await session.send(tx("a@x.test"), io.BytesIO(message))
            assert result.delivered
        [body] = peer.conns[0].messages
        unstuffed = b"\r\n".join(l[1:] if l.startswith(b".") else l for l in body.split(b"\r\n"))
        assert unstuffed == message.replace(b"\n", b"\r\n")


async def test_lmtp_reply_per_recipient():
    finals = {"a@x.test": "250 2.0.0 a delivered\r\n", "b@x.test": "452 4.2.2 b over quota\r\n",
              "d@x.test": "552 5.2.2 d too big\r\n"}

    def rcpt(address: str) -> str:
        return "550 5.1.1 no such user\r\n" if address == "c@x.test" else "250 2.1.5 ok\r\n"

    async with Peer(lambda c: dialogue(c, keywords=("PIPELINING", "ENHANCEDSTATUSCODES"),
                                       lmtp=True, rcpt=rcpt, final=finals.__getitem__)) as peer:
        async with await open_session(config(peer.port, scheme="lmtp")) as session:
            result = await session.send(tx("a@x.test", "b@x.test", "c@x.test", "d@x.test"),
                                        io.BytesIO(MESSAGE))
        assert outcomes(result) == [("a@x.test", Outcome.OK, 250), ("b@x.test", Outcome.TEMPFAIL, 452),
                                    ("c@x.test", Outcome.PERMFAIL, 550), ("d@x.test", Outcome.PERMFAIL, 552)]
        assert peer.conns[0].lines[0] == "LHLO client.example.net"
        assert result.recipients[1].reply.text == "b over quota"


async def test_lmtp_over_a_unix_socket(tmp_path):
    path = str(tmp_path / "lmtp")
    async with Peer(lambda c: dialogue(c, lmtp=True), path=path) as peer:
        cfg = ClientConfig(host="localhost", scheme="lmtp", socket_path=path, helo="client.example.net")
        async with await open_session(cfg) as session:
            result = await session.send(tx("a@x.test", "b@x.test"), io.BytesIO(MESSAGE))
            assert [r.reply.code for r in result.recipients] == [250, 250]
            assert session.usable
        assert peer.conns[0].lines[0] == "LHLO client.example.net"
        assert len(peer.conns) == 1


async def test_unix_socket_refused_is_a_connect_error(tmp_path):
    cfg = ClientConfig(host="localhost", scheme="lmtp", socket_path=str(tmp_path / "none"))
    with pytest.raises(RouteError) as e:
        await open_session(cfg)
    assert e.value.phase is Phase.CONNECT
    assert "No such file" in e.value.reason
    with pytest.raises(ValueError, match="lmtp only"):
        ClientConfig(host="localhost", scheme="smtp", socket_path="/run/x")
    with pytest.raises(ValueError, match="absolute"):
        ClientConfig(host="localhost", scheme="lmtp", socket_path="run/x")


async def test_source_address_is_bound():
    async with Peer(dialogue) as peer:
        async with await open_session(config(peer.port, scheme="smtp+notls", source="127.0.0.2")):
            pass
        assert peer.conns[0].peer[0] == "127.0.0.2"


async def test_helo_when_ehlo_refused_and_nothing_needed():
    async def handler(conn: Conn) -> None:
        await conn.send("220 old ready\r\n")
        await conn.line()
        await conn.send("502 5.5.1 what is EHLO\r\n")
        await dialogue_after_helo(conn)

    async def dialogue_after_helo(conn: Conn) -> None:
        assert (await conn.line()).startswith("HELO ")
        await conn.send("250 old\r\n")
        assert (await conn.line()) == "QUIT"
        await conn.send("221 bye\r\n")

    async with Peer(handler) as peer, await open_session(config(peer.port, scheme="smtp")) as session:
        assert session.tls is None and not session.proto.extensions.pipelining
    async with Peer(handler) as peer:
        with pytest.raises(RouteError, match="EHLO rejected: 502") as caught:
            await open_session(config(peer.port, scheme="smtp+tls"))
        assert caught.value.phase is Phase.HELLO


@pytest.mark.parametrize("final", ["235 2.7.0 ok", "534 5.7.9 Mechanism too weak"])
async def test_auth_login_when_plain_is_not_offered(final: str):
    """STARTTLS verified against a CA of the test's own, then AUTH LOGIN;
    534 is a temporary failure of the route with the peer's reason."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("relay.example.test").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    seen: list[str] = []

    async def handler(conn: Conn) -> None:
        await conn.send("220 ready\r\n")
        await conn.line()
        await conn.send(ehlo_reply(("STARTTLS", "AUTH PLAIN LOGIN")))
        assert await conn.line() == "STARTTLS"
        await conn.send("220 go ahead\r\n")
        await conn.start_tls(server_ctx)
        assert (await conn.line()).startswith("EHLO ")
        await conn.send(ehlo_reply(("PIPELINING", "AUTH LOGIN CRAM-MD5")))
        for challenge in ("", "334 VXNlcm5hbWU6\r\n", "334 UGFzc3dvcmQ6\r\n"):
            await conn.send(challenge)
            seen.append(await conn.line())
        await conn.send(final + "\r\n")
        if final.startswith("2"):
            assert await conn.line() == "QUIT"
            await conn.send("221 bye\r\n")

    cfg_fields = {"scheme": "smtp+tls", "tls_context": client_ctx,
                  "server_name": "relay.example.test", "credentials": Credentials("user", "pass word")}
    async with Peer(handler) as peer:
        if final.startswith("2"):
            async with await open_session(config(peer.port, **cfg_fields)) as session:
                assert session.tls is not None and session.tls[1] == "YES"
        else:
            with pytest.raises(RouteError, match="AUTH rejected: 534 5.7.9 Mechanism too weak") as caught:
                await open_session(config(peer.port, **cfg_fields))
            assert caught.value.phase is Phase.AUTH and caught.value.reply.code == 451
    assert seen == ["AUTH LOGIN", "dXNlcg==", "cGFzcyB3b3Jk"]


# -- hostile peers ------------------------------------------------------------

async def hostile_greeting(conn: Conn, greeting: bytes) -> None:
    await conn.send(greeting)
    await conn.line()


@pytest.mark.parametrize("greeting, phase, reason", [
    (b"hello there\r\n", Phase.GREETING, "not a reply line"),
    (b"554 5.7.1 go away\r\n", Phase.GREETING, "Banner rejected: 554 5.7.1 go away"),
    (b"220-a\r\n221 b\r\n", Phase.GREETING, "mixed reply codes"),
])
async def test_bad_greeting(greeting: bytes, phase: Phase, reason: str):
    async with Peer(lambda c: hostile_greeting(c, greeting)) as peer:
        with pytest.raises(RouteError) as caught:
            await open_session(config(peer.port, limits=SHORT))
        assert caught.value.phase is phase and reason in caught.value.reason


async def test_endless_continuation_lines():
    sent = []

    async def handler(conn: Conn) -> None:
        await conn.send("220 ready\r\n")
        await conn.line()
        for _ in range(5000):                    # bounded: the client gives up after 1000
            await conn.send(b"250-PIPELINING\r\n" * 10)
            sent.append(10)
            await asyncio.sleep(0)

    async with Peer(handler) as peer:
        with pytest.raises(RouteError, match="more than 1000 lines") as caught:
            await open_session(config(peer.port, limits=SHORT))
        assert caught.value.phase is Phase.HELLO
    assert sum(sent) < 50000


async def test_ten_megabyte_reply_line():
    written = [0]

    async def handler(conn: Conn) -> None:
        await conn.send(b"220 ")
        piece = b"x" * 65536
        for _ in range(160):                     # 10 MiB, unless the client leaves first
            await conn.send(piece)
            written[0] += len(piece)

    async with Peer(handler) as peer:
        tracemalloc.start()
        try:
            with pytest.raises(RouteError, match="longer than 512 octets") as caught:
                await open_session(config(peer.port, limits=SHORT))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert caught.value.phase is Phase.GREETING
        assert peak < 2 * 1024 * 1024, peak      # never the whole line
    assert written[0] < 10 * 1024 * 1024


async def test_stall_after_dot():
    async with (Peer(stall_after_dot) as peer,
                await open_session(config(peer.port, scheme="smtp+notls", limits=SHORT)) as session):
        result = await session.send(tx("a@x.test", "b@x.test"), io.BytesIO(MESSAGE))
        assert [r.outcome for r in result.recipients] == [Outcome.TEMPFAIL] * 2
        assert "timeout after 0.3s waiting for the reply to ." in result.error
        assert not result.recipients[0].from_peer and not session.usable


async def stall_after_dot(conn: Conn) -> None:
    await conn.send("220 ready\r\n")
    await conn.line()
    await conn.send(ehlo_reply(("PIPELINING",)))
    for _ in range(4):               # MAIL, RCPT, RCPT, DATA
        await conn.line()
    await conn.send("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    await conn.data()
    await asyncio.sleep(3)           # the client times out long before


async def test_stall_after_data_command():
    async def handler(conn: Conn) -> None:
        await conn.send("220 ready\r\n")
        await conn.line()
        await conn.send(ehlo_reply(()))
        await conn.line()
        await conn.send("250 ok\r\n")
        await conn.line()
        await conn.send("250 ok\r\n")
        await conn.line()            # DATA: no reply
        await asyncio.sleep(3)

    async with Peer(handler) as peer:
        limits = dataclasses.replace(SHORT, reply_timeout=1.0)
        async with await open_session(config(peer.port, scheme="smtp+notls", limits=limits)) as session:
            result = await session.send(tx("a@x.test"), io.BytesIO(MESSAGE))
        assert result.recipients[0].outcome is Outcome.TEMPFAIL
        assert "timeout after 1s waiting for the reply to DATA" in result.error


async def test_peer_that_stops_reading_the_message():
    """A peer that takes DATA and then reads nothing: writing times out."""
    async def handler(conn: Conn) -> None:
        await conn.send("220 ready\r\n")
        await conn.line()
        await conn.send(ehlo_reply(("PIPELINING",)))
        for _ in range(3):
            await conn.line()
        await conn.send("250 ok\r\n250 ok\r\n354 go\r\n")
        await asyncio.sleep(5)

    async with Peer(handler) as peer:
        cfg = config(peer.port, scheme="smtp+notls", limits=SHORT)
        async with await open_session(cfg) as session:
            result = await session.send(tx("a@x.test"), io.BytesIO((b"y" * 998 + b"\r\n") * 8000))
        assert result.recipients[0].outcome is Outcome.TEMPFAIL
        assert "did not take our data" in result.error


@pytest.mark.parametrize("scheme", ["smtp+tls", "smtp"])
async def test_reply_lines_with_the_starttls_220_are_refused(scheme: str):
    """Bytes that came with the 220 are never read as if they came over
    TLS (OpenSMTPD 6.8's crash): the session ends, opportunistic or not."""
    async def handler(conn: Conn) -> None:
        await conn.send("220 ready\r\n")
        await conn.line()
        await conn.send(ehlo_reply(("STARTTLS", "PIPELINING")))
        assert await conn.line() == "STARTTLS"
        await conn.send("220 2.0.0 go ahead\r\n250-PIPELINING\r\n250 AUTH PLAIN\r\n")
        await asyncio.sleep(3)

    async with Peer(handler) as peer:
        with pytest.raises(RouteError, match="before TLS") as caught:
            await open_session(config(peer.port, scheme=scheme, limits=SHORT))
        assert caught.value.phase is Phase.TLS and len(peer.conns) == 1


async def test_opportunistic_tls_falls_back_to_plain_after_a_failed_handshake():
    async def handler(conn: Conn) -> None:
        await conn.send("220 ready\r\n")
        await conn.line()
        await conn.send(ehlo_reply(("STARTTLS",)))
        line = await conn.line()
        if line == "STARTTLS":
            await conn.send("220 go ahead\r\n")
            await asyncio.sleep(0.05)
            await conn.send(b"this is not TLS\r\n" * 10)      # the handshake fails
            await asyncio.sleep(1)
            return
        assert line == "QUIT"
        await conn.send("221 bye\r\n")

    async with Peer(handler) as peer:
        session = await open_session(config(peer.port, scheme="smtp", limits=SHORT))
        assert session.tls is None
        await session.close()
        assert len(peer.conns) == 2 and "STARTTLS" not in peer.conns[1].lines
    async with Peer(handler) as peer:
        with pytest.raises(RouteError, match="TLS handshake failed") as caught:
            await open_session(config(peer.port, scheme="smtp+tls", limits=SHORT))
        assert caught.value.phase is Phase.TLS and len(peer.conns) == 1


async def test_garbage_during_a_transaction():
    async def handler(conn: Conn) -> None:
        await conn.send("220 ready\r\n")
        await conn.line()
        await conn.send(ehlo_reply(("PIPELINING",)))
        await conn.line()
        await conn.send("250 ok\r\n250 ok\r\nHTTP/1.1 400 Bad Request\r\n")
        await asyncio.sleep(1)

    async with Peer(handler) as peer:
        async with await open_session(config(peer.port, scheme="smtp+notls", limits=SHORT)) as session:
            result = await session.send(tx("a@x.test", "b@x.test"), io.BytesIO(MESSAGE))
            assert not session.usable
        assert [r.outcome for r in result.recipients] == [Outcome.TEMPFAIL] * 2
        assert "not a reply line" in result.error


async def test_connection_closed_mid_transaction_and_421():
    async def closes(conn: Conn) -> None:
        await conn.send("220 ready\r\n")
        await conn.line()
        await conn.send(ehlo_reply(()))
        await conn.line()
        await conn.send("250 ok\r\n")
        await conn.line()
        await conn.send("550 5.1.1 no\r\n")
        await conn.line()                       # second RCPT: hang up

    async with Peer(closes) as peer:
        async with await open_session(config(peer.port, scheme="smtp+notls", limits=SHORT)) as session:
            result = await session.send(tx("a@x.test", "b@x.test"), io.BytesIO(MESSAGE))
        assert outcomes(result)[0] == ("a@x.test", Outcome.PERMFAIL, 550)
        assert result.recipients[1].outcome is Outcome.TEMPFAIL and "closed" in result.error

    async def shutting_down(conn: Conn) -> None:
        await conn.send("220 ready\r\n")
        await conn.line()
        await conn.send(ehlo_reply(()))
        await conn.line()
        await conn.send("421 4.3.2 shutting down\r\n")

    async with (Peer(shutting_down) as peer,
                await open_session(config(peer.port, scheme="smtp+notls", limits=SHORT)) as session):
        result = await session.send(tx("a@x.test"), io.BytesIO(MESSAGE))
        assert outcomes(result) == [("a@x.test", Outcome.TEMPFAIL, 421)]
        assert not session.usable


async def test_message_file_unreadable_never_sends_the_dot():
    class Broken(io.BytesIO):
        def read(self, size=-1):
            if self.tell() > 0:
                raise OSError(5, "Input/output error")
            return super().read(size)

    async with Peer(lambda c: dialogue(c, keywords=("PIPELINING",))) as peer:
        cfg = config(peer.port, scheme="smtp+notls", limits=ClientLimits(chunk_size=10))
        async with await open_session(cfg) as session:
            result = await session.send(tx("a@x.test"), Broken(MESSAGE))
        assert result.recipients[0].outcome is Outcome.TEMPFAIL
        assert "Cannot read the message" in result.error
        assert peer.conns[0].messages == []


@pytest.mark.parametrize("scheme", ["smtp+tls", "smtp"])
async def test_a_relay_pki_presents_its_client_certificate(tmp_path, scheme: str):
    """`relay ... pki NAME`: the next hop, which demands a client
    certificate, gets the pki's, verified (smtp+tls, with `ca`) or
    opportunistic (smtp); a pki that does not load is refused at start."""
    from postillion.config import parse
    from postillion.mta.agent import ClientCertError, client_contexts

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("relay.example.test").configure_cert(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(server_ctx)
    client = ca.issue_cert("mx.example.test")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.crt"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    conf = (f"pki mx.example.test cert {tmp_path / 'client.crt'}\n"
            f"pki mx.example.test key {tmp_path / 'client.key'}\n"
            f"ca relays cert {tmp_path / 'ca.pem'}\n"
            'action "out" relay host smtp+tls://relay.example.test pki mx.example.test ca relays\n'
            'match from local for any action "out"\n')
    config = parse(conf, str(tmp_path / "smtpd.conf"))
    verified, opportunistic = client_contexts(config)[("relays", "mx.example.test")]
    seen: list[dict] = []

    async def handler(conn: Conn) -> None:
        await conn.send("220 ready\r\n")
        await conn.line()
        await conn.send(ehlo_reply(("STARTTLS",)))
        assert await conn.line() == "STARTTLS"
        await conn.send("220 go ahead\r\n")
        await conn.start_tls(server_ctx)
        seen.append(conn.writer.get_extra_info("peercert"))
        assert (await conn.line()).startswith("EHLO ")
        await conn.send(ehlo_reply(("PIPELINING",)))
        assert await conn.line() == "QUIT"
        await conn.send("221 bye\r\n")

    async with Peer(handler) as peer:
        async with await open_session(config_for_pki(peer.port, scheme, verified, opportunistic)) as session:
            assert session.tls is not None
    [cert] = seen
    assert ("commonName", "mx.example.test") in [pair for rdn in cert["subject"] for pair in rdn] or \
        any("mx.example.test" in value for _, value in cert.get("subjectAltName", ()))
    # A pki whose key does not load: refused, naming the pki line.
    (tmp_path / "client.key").write_text("not a key\n")
    with pytest.raises(ClientCertError, match=r"smtpd.conf:1:1: pki mx.example.test: cannot load"):
        client_contexts(parse(conf, str(tmp_path / "smtpd.conf")))


def config_for_pki(port: int, scheme: str, verified: ssl.SSLContext,
                   opportunistic: ssl.SSLContext) -> ClientConfig:
    return config(port, scheme=scheme, server_name="relay.example.test", tls_context=verified,
                  opportunistic_context=opportunistic)
