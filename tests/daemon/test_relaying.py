"""The queue's end of the mta channel (daemon/relaying.py), against a
scripted mta end over real socketpairs: an answer is applied, a relay the
mta process died holding goes to its successor (a bounded number of
times), and with no mta process an envelope fails temporarily in time."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from postillion import channel as ch
from postillion.daemon.relaying import MtaLink
from postillion.errors import PermFail, TempFail
from postillion.queue.envelope import Envelope

MSGID = 0x1234ABCD


def envelope() -> Envelope:
    return Envelope.new(MSGID, dispatcher="out", rcpt="bob@remote.test",
                        dest="bob@remote.test", type="mta", sender="alice@example.test")


class FakeMta:
    """The mta process's end of one channel: records each Relay (and the
    message it was handed) and answers with `answer(frame)`, or never when
    that returns None."""

    def __init__(self, sock: socket.socket,
                 answer: Callable[[ch.Relay], Awaitable[ch.Relayed | None]]) -> None:
        self.seen: list[tuple[ch.Relay, bytes]] = []
        self.answer = answer
        self.channel = ch.Channel(sock, self._on_frame, "fake mta")

    async def _on_frame(self, frame: ch.Frame) -> None:
        assert isinstance(frame, ch.Relay) and len(frame.fds) == 1
        self.seen.append((frame, os.pread(frame.fds[0], 1000, 0)))
        reply = await self.answer(frame)
        if reply is not None:
            self.channel.send(reply)


def ok(frame: ch.Relay) -> Awaitable[ch.Relayed]:
    async def answer() -> ch.Relayed:
        return ch.Relayed(frame.id, "ok", 250, "2.0.0", "Relayed", "")
    return answer()


async def silent(frame: ch.Relay) -> None:
    return None


@pytest.fixture
def message(tmp_path) -> Callable[[int], Path]:
    (tmp_path / "message").write_bytes(b"Subject: hi\r\n\r\nhi\r\n")
    return lambda msgid: tmp_path / "message"


def connect(link: MtaLink, answer) -> FakeMta:
    ours, theirs = socket.socketpair()
    link.connect(ours)
    return FakeMta(theirs, answer)


async def test_an_answer_is_applied_and_the_message_is_handed_over(message):
    link = MtaLink(message)
    mta = connect(link, ok)
    env = envelope()
    await link.relay(env)
    [(frame, data)] = mta.seen
    assert data == b"Subject: hi\r\n\r\nhi\r\n"
    assert Envelope.from_bytes(frame.envelope.encode()) == env

    async def refuse(frame: ch.Relay) -> ch.Relayed:
        return ch.Relayed(frame.id, "permfail", 550, "5.1.1", "No such user", "550 from mx")
    connect(link, refuse)
    with pytest.raises(PermFail) as e:
        await link.relay(envelope())
    assert e.value.reply.code == 550 and e.value.reason == "550 from mx"
    link.close()


def frame_id(frame: ch.Relay) -> int:
    return Envelope.from_bytes(frame.envelope.encode()).id


async def test_a_relay_lost_with_the_mta_process_goes_to_the_next_one(message):
    link = MtaLink(message)
    first = connect(link, silent)
    task = asyncio.create_task(link.relay(envelope()))
    while not first.seen:
        await asyncio.sleep(0.01)
    first.channel.close()                    # the mta process dies holding it
    await asyncio.sleep(0.05)
    assert not task.done()                   # waiting for a successor, not failed
    second = connect(link, ok)
    await asyncio.wait_for(task, 5)
    assert [frame_id(f) for f, _ in second.seen] == [frame_id(first.seen[0][0])]
    link.close()


async def test_an_envelope_that_keeps_losing_its_mta_process_fails_temporarily(message):
    link = MtaLink(message, resends=1)
    task = asyncio.create_task(link.relay(envelope()))
    for _ in range(2):
        mta = connect(link, silent)
        while not mta.seen:
            await asyncio.sleep(0.01)
        mta.channel.close()
    with pytest.raises(TempFail) as e:
        await asyncio.wait_for(task, 5)
    assert e.value.reply.code == 451 and "went away 2 times" in e.value.reason
    link.close()


async def test_without_an_mta_process_an_envelope_fails_temporarily(message):
    link = MtaLink(message, link_wait=0.1)
    with pytest.raises(TempFail) as e:
        await link.relay(envelope())
    assert str(e.value.reply) == "451 4.3.0 Relaying is not available now"
    mta = connect(link, ok)
    mta.channel.close()
    await asyncio.sleep(0.05)
    with pytest.raises(TempFail):
        await link.relay(envelope())
    link.close()


async def test_an_unanswered_relay_times_out(message):
    link = MtaLink(message, relay_timeout=0.1)
    connect(link, silent)
    with pytest.raises(TempFail) as e:
        await link.relay(envelope())
    assert "did not answer" in e.value.reason
    link.close()
