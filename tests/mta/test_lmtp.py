"""The lmtp delivery method (mta/lmtp.py): scripted LMTP servers for what
only a script can do (count connections, stall, close an idle session),
and the private Dovecot for the real thing, through the in-process daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from pathlib import Path

import pytest

from postillion.config import load
from postillion.daemon import Daemon, lmtp_job
from postillion.errors import PermFail, TempFail
from postillion.mta._events import ClientLimits
from postillion.mta.lmtp import LmtpAgent, LmtpJob, LmtpSettings, client_config
from postillion.queue.envelope import Envelope, new_msgid
from postillion.table.values import Userinfo

from ..dovecot import dovecot  # noqa: F401  (fixture)
from ..e2e.conftest import delivery_ids, free_port
from .peers import Conn, Peer, dialogue, ehlo_reply, rcpt_address

MESSAGE = b"From: bob@example.test\r\nSubject: lmtp\r\n\r\nhello\r\n.a dot line\r\n"
FAST = LmtpSettings(idle_timeout=30, limits=ClientLimits(
    connect_timeout=2, reply_timeout=2, data_end_timeout=2, quit_timeout=1))


def envelope(msgid: int, dest: str, **fields) -> Envelope:
    fields.setdefault("sender", "bob@example.test")
    return Envelope.new(msgid, dispatcher="lmtp", rcpt=dest, dest=dest, **fields)


@pytest.fixture
def message(tmp_path) -> Path:
    path = tmp_path / "message"
    path.write_bytes(MESSAGE)
    return path


async def deliver(agent: LmtpAgent, destination: str, message: Path, *envs: Envelope,
                  rcpt=lambda e: e.dest) -> list[BaseException | None]:
    """Hand every envelope over in one turn (as the scheduler does), each
    with its own open message file (as the queue hands them)."""
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(message.open("rb")) for _ in envs]
        return await asyncio.gather(*(agent.deliver(LmtpJob(e, destination, rcpt(e)), f)
                                      for e, f in zip(envs, files)), return_exceptions=True)


def commands(conn: Conn) -> list[str]:
    return [line.split(":")[0].split()[0].upper() for line in conn.lines]


def test_destinations_as_the_configuration_writes_them():
    limits = ClientLimits()
    tcp = client_config("127.0.0.1:24", "mx.example.test", limits)
    assert (tcp.host, tcp.port, tcp.scheme, tcp.socket_path) == ("127.0.0.1", 24, "lmtp", "")
    assert client_config("[::1]:2424", "h", limits).host == "::1"
    assert client_config("[IPv6:::1]:2424", "h", limits).host == "::1"
    assert client_config("mail.example.test:24", "h", limits).host == "mail.example.test"
    unix = client_config("/run/dovecot/lmtp", "h", limits)
    assert (unix.socket_path, unix.helo) == ("/run/dovecot/lmtp", "h")
    for bad in ("nohost", ":24", "host:", "host:x"):
        with pytest.raises(ValueError):
            client_config(bad, "h", limits)


def test_rcpt_to_is_the_user_name_or_with_rcpt_to_the_address(tmp_path):
    conf = tmp_path / "t.conf"
    conf.write_text('action "by_user" lmtp "/run/%{user.username}/%{rcpt.domain}/lmtp"\n'
                    'action "by_rcpt" lmtp 127.0.0.1:24 rcpt-to\n'
                    'match from any for any action "by_user"\n')
    config = load(conf)
    env = Envelope.new(new_msgid(), dispatcher="by_user", rcpt="Alice+tag@Example.test",
                       dest="alice@example.test", sender="bob@example.test", mda_user="alice")
    user = Userinfo("alice", 2000, 2000, "/var/vmail/alice")
    job = lmtp_job(config.actions["by_user"], env, user)
    assert (job.destination, job.rcpt_to) == ("/run/alice/Example.test/lmtp", "alice")
    job = lmtp_job(config.actions["by_rcpt"], env, user)
    assert (job.destination, job.rcpt_to) == ("127.0.0.1:24", "alice@example.test")
    # A value never picks another directory: "/" in it becomes ":".
    evil = env.replace(rcpt="x@a/../b")
    assert lmtp_job(config.actions["by_user"], evil, user).destination == "/run/alice/a:..:b/lmtp"


async def test_one_transaction_per_message_and_one_answer_per_recipient(message):
    def rcpt(address: str) -> str:
        return "550 5.1.1 <carol@example.test> User doesn't exist\r\n" \
            if address.startswith("carol") else "250 2.1.5 OK\r\n"

    def final(address: str) -> str:
        return "452 4.2.2 Mailbox is full\r\n" if address.startswith("dave") \
            else f"250 2.0.0 <{address}> Saved\r\n"

    async with Peer(lambda c: dialogue(c, lmtp=True, rcpt=rcpt, final=final)) as peer:
        agent = LmtpAgent("mx.example.test", FAST)
        msgid = new_msgid()
        envs = [envelope(msgid, f"{u}@example.test") for u in ("alice", "carol", "dave", "bob")]
        results = await deliver(agent, f"127.0.0.1:{peer.port}", message, *envs)
        await agent.stop()
    assert results[0] is None and results[3] is None
    assert isinstance(results[1], PermFail) and results[1].reply.code == 550
    assert "User doesn't exist" in results[1].reason
    assert isinstance(results[2], TempFail) and results[2].reply.code == 452
    [conn] = peer.conns
    assert conn.lines[0] == "LHLO mx.example.test"
    assert commands(conn).count("MAIL") == 1 and commands(conn).count("RCPT") == 4
    assert conn.lines[1] == "MAIL FROM:<bob@example.test>"
    # Sent as queued: no Return-Path or Delivered-To of ours.
    assert conn.messages == [MESSAGE.replace(b"\r\n.a", b"\r\n..a")]


async def test_the_same_rcpt_twice_goes_in_two_transactions(message):
    async with Peer(lambda c: dialogue(c, lmtp=True)) as peer:
        agent = LmtpAgent("mx.example.test", FAST)
        msgid = new_msgid()
        # alice@ and postmaster@ both delivered as user alice: two copies, as
        # two separate deliveries would give, never one RCPT said twice.
        envs = [envelope(msgid, "alice@example.test"), envelope(msgid, "postmaster@example.test")]
        results = await deliver(agent, f"127.0.0.1:{peer.port}", message, *envs,
                                rcpt=lambda e: "alice")
        await agent.stop()
    assert results == [None, None]
    lines = [line for conn in peer.conns for line in conn.lines]
    assert [rcpt_address(l) for l in lines if l.startswith("RCPT")] == ["alice", "alice"]
    assert sum(commands(conn).count("MAIL") for conn in peer.conns) == 2
    assert all(len(conn.messages) == commands(conn).count("RCPT") for conn in peer.conns)


async def test_sessions_are_reused_and_idle_ones_closed(message):
    async with Peer(lambda c: dialogue(c, lmtp=True)) as peer:
        settings = dataclasses.replace(FAST, idle_timeout=0.3)
        agent = LmtpAgent("mx.example.test", settings)
        destination = f"127.0.0.1:{peer.port}"
        for _ in range(3):
            assert await deliver(agent, destination, message, envelope(new_msgid(), "a@x.test")) == [None]
        assert len(peer.conns) == 1 and agent.destinations[destination].opened == 1
        deadline = time.monotonic() + 5
        while "QUIT" not in peer.conns[0].lines:      # idle too long: QUIT
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert await deliver(agent, destination, message, envelope(new_msgid(), "a@x.test")) == [None]
        await agent.stop()
    assert len(peer.conns) == 2


async def test_a_session_the_server_closed_while_idle_is_replaced(message):
    async def once(conn: Conn) -> None:
        """Delivers one message, then says 421 to the next command and
        closes, as a server ending an idle session does."""
        await conn.send("220 lmtp ready\r\n")
        await conn.line()
        await conn.send(ehlo_reply(("PIPELINING", "ENHANCEDSTATUSCODES")))
        await conn.line()
        await conn.send("250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 go\r\n")
        await conn.line()
        await conn.line()
        await conn.data()
        await conn.send("250 2.0.0 Saved\r\n")
        await conn.line()
        await conn.send("421 4.4.2 Disconnected for inactivity\r\n")

    async with Peer(once) as peer:
        agent = LmtpAgent("mx.example.test", FAST)
        destination = f"127.0.0.1:{peer.port}"
        assert await deliver(agent, destination, message, envelope(new_msgid(), "a@x.test")) == [None]
        assert await deliver(agent, destination, message, envelope(new_msgid(), "a@x.test")) == [None]
        await agent.stop()
    assert len(peer.conns) == 2
    assert peer.conns[0].lines[-1].startswith("MAIL FROM:")    # answered 421
    assert len(peer.conns[1].messages) == 1


async def test_a_server_that_stalls_after_the_dot_is_a_temporary_failure(message):
    async def stall(conn: Conn) -> None:
        await conn.send("220 lmtp ready\r\n")
        await conn.line()
        await conn.send(ehlo_reply(("ENHANCEDSTATUSCODES",)))
        for reply in ("250 2.1.0 OK\r\n", "250 2.1.5 OK\r\n", "354 go\r\n"):
            await conn.line()
            await conn.send(reply)
        await conn.data()
        await asyncio.sleep(10)                         # no answer after the dot

    settings = dataclasses.replace(FAST, limits=dataclasses.replace(FAST.limits, data_end_timeout=0.3))
    async with Peer(stall) as peer:
        agent = LmtpAgent("mx.example.test", settings)
        started = time.monotonic()
        [result] = await deliver(agent, f"127.0.0.1:{peer.port}", message,
                                 envelope(new_msgid(), "a@x.test"))
        await agent.stop()
    assert isinstance(result, TempFail) and "timeout" in result.reason
    assert time.monotonic() - started < 3


async def test_an_unreachable_server_fails_what_waits_temporarily(message, tmp_path):
    agent = LmtpAgent("mx.example.test", FAST)
    msgid = new_msgid()
    results = await deliver(agent, f"127.0.0.1:{free_port()}", message,
                            envelope(msgid, "a@x.test"), envelope(msgid, "b@x.test"))
    results += await deliver(agent, str(tmp_path / "no-socket"), message,
                             envelope(new_msgid(), "a@x.test"))
    await agent.stop()
    assert all(isinstance(r, TempFail) for r in results), results
    assert "Connection failed" in results[0].reason
    assert results[0].reply.enhanced == "4.4.1"


async def test_over_a_unix_socket(message, tmp_path):
    path = str(tmp_path / "lmtp")
    async with Peer(lambda c: dialogue(c, lmtp=True), path=path) as peer:
        agent = LmtpAgent("mx.example.test", FAST)
        assert await deliver(agent, path, message, envelope(new_msgid(), "a@x.test"),
                             rcpt=lambda e: "a") == [None]
        await agent.stop()
    assert peer.conns[0].lines[2] == "RCPT TO:<a>"


# -- the in-process daemon into the private Dovecot ------------------------------

CONFIG = """\
table users {{ alice = "{uid}:{gid}:{alice}", carol = "{uid}:{gid}:/nonexistent" }}
table virtuals {{ "alice@tcp.example.test" = alice, "carol@tcp.example.test" = carol, \
"alice@unix.example.test" = alice }}
action "tcp" lmtp {lmtp} rcpt-to virtual <virtuals> userbase <users>
action "unix" lmtp "{socket}" virtual <virtuals> userbase <users>
match from any for domain "tcp.example.test" action "tcp"
match from any for domain "unix.example.test" action "unix"
"""


async def test_the_daemon_delivers_into_dovecot(dovecot, tmp_path, caplog):  # noqa: F811
    uid, gid = delivery_ids()
    conf = tmp_path / "postillion.conf"
    conf.write_text(CONFIG.format(uid=uid, gid=gid, alice=dovecot.home("alice"),
                                  lmtp=dovecot.lmtp_address, socket=dovecot.lmtp_socket))
    daemon = Daemon(load(conf), tmp_path / "spool")
    caplog.set_level(logging.INFO, logger="postillion")
    await daemon.start()
    try:
        body = b"Message-ID: <inproc-1@example.test>\r\nSubject: in process\r\n\r\nhi\r\n"
        reply = await daemon.inject("bob@example.org", ["alice@tcp.example.test",
                                                        "carol@tcp.example.test",
                                                        "alice@unix.example.test"], body)
        assert reply.code == 250, reply
        deadline = time.monotonic() + 15
        while caplog.text.count("mda delivery") < 3:
            assert time.monotonic() < deadline, caplog.text
            await asyncio.sleep(0.05)
    finally:
        await daemon.stop()
    got = await asyncio.to_thread(dovecot.messages, "alice")
    mine = [m for m in got if b"<inproc-1@example.test>" in m]
    assert len(mine) == 2
    assert any(b"for <alice@tcp.example.test>;" in m for m in mine)     # rcpt-to: the address
    assert any(b"for <alice>;" in m for m in mine)                       # else: the user name
    log = caplog.text
    assert "to=<carol@tcp.example.test>" in log and "result=PermFail" in log
    assert 'stat="550 5.1.1 <carol@tcp.example.test> User doesn\'t exist' in log
    assert log.count("result=Ok stat=Delivered") == 2
