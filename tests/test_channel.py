"""Frames between the daemon's processes: typed, bounded, and a malformed one
ends the channel without raising anything else."""

from __future__ import annotations

import asyncio
import os
import socket
import struct

import pytest
from hypothesis import given, settings, strategies as st

from postillion import channel as ch


async def pair():
    a, b = socket.socketpair()
    got: asyncio.Queue[ch.Frame] = asyncio.Queue()

    async def keep(frame: ch.Frame) -> None:
        # fds are closed after the handler: keep a copy to look at
        await got.put(frame if not frame.fds else
                      type(frame)(**{k: getattr(frame, k) for k in frame.__dataclass_fields__
                                     if k != "fds"}, fds=tuple(os.dup(f) for f in frame.fds)))

    return ch.Channel(a, keep, "a"), ch.Channel(b, keep, "b"), got


async def test_frames_round_trip_with_descriptors():
    a, b, got = await pair()
    r, w = os.pipe()
    try:
        a.send(ch.Committed(("one", "two")))
        a.send(ch.Deliver(7, 0x1234, 1000, 1000, "bob", "/home/bob", None, "a@x", "b@y",
                          "b@y", "Return-Path: <a@x>\r\n", "1.Eab.mx", fds=(r,)))
        first = await asyncio.wait_for(got.get(), 5)
        second = await asyncio.wait_for(got.get(), 5)
        assert first == ch.Committed(("one", "two"))
        assert isinstance(second, ch.Deliver) and second.id == 7 and second.path is None
        [fd] = second.fds
        os.write(w, b"hello")
        assert os.read(fd, 5) == b"hello"
        os.close(fd)
    finally:
        os.close(r)
        os.close(w)
        a.close()
        b.close()


async def test_a_big_frame_crosses_in_pieces():
    a, b, got = await pair()
    envelopes = tuple("x" * 1000 for _ in range(3000))        # 3 MB, many reads
    a.send(ch.Committed(envelopes))
    frame = await asyncio.wait_for(got.get(), 10)
    assert frame == ch.Committed(envelopes)
    a.close()
    b.close()


async def test_descriptors_queued_behind_a_full_socket_survive_the_sender_closing_them():
    """A frame that waits for room keeps its own duplicates: the caller may
    close its descriptor at once (as the parent does after QueuePeer)."""
    a_sock, b_sock = socket.socketpair()
    got: asyncio.Queue[ch.Frame] = asyncio.Queue()

    async def keep(frame: ch.Frame) -> None:
        fds = tuple(os.dup(f) for f in frame.fds)
        await got.put(type(frame)(**{k: getattr(frame, k) for k in frame.__dataclass_fields__
                                     if k != "fds"}, fds=fds))

    a = ch.Channel(a_sock, keep, "a")
    big = ch.Committed(tuple("x" * 1000 for _ in range(3000)))    # more than the socket holds
    a.send(big)
    assert a._out, "the socket must be full for this test to mean anything"
    r, w = os.pipe()
    a.send(ch.Inject(1, "", ("a@x",), fds=(r,)))
    os.close(r)                                   # ours to close at once
    b = ch.Channel(b_sock, keep, "b")             # now the other side reads
    try:
        assert await asyncio.wait_for(got.get(), 10) == big
        frame = await asyncio.wait_for(got.get(), 10)
        assert isinstance(frame, ch.Inject)
        [fd] = frame.fds
        os.write(w, b"still open")
        assert os.read(fd, 10) == b"still open"
        os.close(fd)
    finally:
        os.close(w)
        a.close()
        b.close()


@pytest.mark.parametrize("body", [
    b"not json", b"[1, 2]", b'{"type": "Nope"}', b'{"type": "Hello", "role": "smtp"}',
    b'{"type": "Hello", "role": 5, "pid": 1}', b'{"type": "Hello", "role": "q", "pid": true}',
    b'{"type": "Committed", "envelopes": [1, 2]}',
    b'{"type": "Hello", "role": "q", "pid": 1, "nfds": 2}',
    b'{"type": "Hello", "role": "q", "pid": 1, "extra": 1}',
])
async def test_a_malformed_frame_closes_the_channel(body):
    a, b = socket.socketpair()
    got: list[ch.Frame] = []

    async def keep(frame: ch.Frame) -> None:
        got.append(frame)

    channel = ch.Channel(b, keep, "b")
    a.sendall(struct.pack(">I", len(body)) + body)
    await asyncio.wait_for(channel.closed.wait(), 5)
    assert channel.error and "malformed" in channel.error and got == []
    a.close()


async def test_an_oversized_frame_is_refused_before_it_is_read():
    a, b = socket.socketpair()

    async def keep(frame: ch.Frame) -> None:
        raise AssertionError(frame)

    channel = ch.Channel(b, keep, "b")
    a.sendall(struct.pack(">I", ch.MAX_FRAME + 1))
    await asyncio.wait_for(channel.closed.wait(), 5)
    assert "over the limit" in (channel.error or "")
    a.close()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_a_frame_or_a_channel_error(body):
    from collections import deque
    try:
        frame = ch.decode(body, deque())
    except ch.ChannelError:
        return
    assert type(frame) in ch.TYPES.values()


async def test_a_frame_the_handler_refuses_closes_the_channel():
    """A well-formed frame of a type this side never expects is treated as
    a malformed one: the channel ends and the peer is not trusted again."""
    a_sock, b_sock = socket.socketpair()

    async def refuse(frame: ch.Frame) -> None:
        raise ch.ChannelError(f"unexpected {type(frame).__name__}")

    async def ignore(frame: ch.Frame) -> None:
        pass

    a = ch.Channel(a_sock, ignore, "a")
    b = ch.Channel(b_sock, refuse, "b")
    a.send(ch.Hello("smtp", 1))
    await asyncio.wait_for(b.closed.wait(), 5)
    assert b.error == "unexpected Hello"
    await asyncio.wait_for(a.closed.wait(), 5)     # and the sender sees its end go
    a.close()
