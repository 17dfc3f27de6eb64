"""The control socket under bad input: a client that breaks the format
costs its own connection, never the server; who may do what is the
kernel's word (SO_PEERCRED), never the client's."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from pathlib import Path

import pytest

from postillion.control import protocol as wire
from postillion.control.client import ControlFailed, request
from postillion.control.ctl import UsageError, match_verb
from postillion.control.server import ControlError, ControlServer, Verb, bind_control

NOBODY = 65534


@pytest.fixture
def spool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Under /tmp with 0711 all the way, so that `nobody` reaches the socket.
    path = Path(os.path.realpath("/tmp")) / f"ctl-{os.getpid()}-{id(tmp_path_factory):x}"
    path.mkdir(mode=0o711)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


async def echo(request, answer):  # type: ignore[no-untyped-def]
    await answer.part({"piece": 1})
    return {"verb": request.verb, "args": list(request.args), "uid": request.peer.uid,
            "body": len(request.body)}


async def refuse(request, answer):  # type: ignore[no-untyped-def]
    raise ControlError(wire.NOT_FOUND, "nothing here")


async def broken(request, answer):  # type: ignore[no-untyped-def]
    raise RuntimeError("a bug")


VERBS = {"echo": Verb(echo), "open": Verb(echo, anyone=True, body_limit=100),
         "refuse": Verb(refuse), "broken": Verb(broken)}


async def serve(spool: Path) -> ControlServer:
    server = ControlServer(bind_control(spool, os.getuid(), os.getgid()), dict(VERBS))
    await server.start()
    return server


def raw(spool: Path, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(spool / "control.sock"))
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def frames(data: bytes) -> list[dict]:  # type: ignore[type-arg]
    out = []
    while data:
        (size,) = struct.unpack("!I", data[:4])
        out.append(json.loads(data[4:4 + size]))
        data = data[4 + size:]
    return out


async def in_thread(fn, *args):  # type: ignore[no-untyped-def]
    return await asyncio.to_thread(fn, *args)


async def test_socket_is_0666_and_answers_in_pieces(spool: Path) -> None:
    server = await serve(spool)
    try:
        assert (spool / "control.sock").stat().st_mode & 0o777 == 0o666
        parts: list[object] = []
        result = await in_thread(lambda: request(spool, "echo", ["a", "b"], on_part=parts.append))
        assert parts == [{"piece": 1}]
        assert result == {"verb": "echo", "args": ["a", "b"], "uid": os.getuid(), "body": 0}
    finally:
        await server.stop()


@pytest.mark.parametrize("data", [
    struct.pack("!I", wire.MAX_REQUEST + 1) + b"{",      # oversized
    struct.pack("!I", 5) + b"nope!",                      # not JSON
    struct.pack("!I", 2) + b"[]",                         # not an object
    struct.pack("!I", 100) + b"{}",                       # truncated
    wire.encode({"verb": 7}),                             # malformed request
    wire.encode({"verb": "echo", "args": "x"}),
    b"\x00\x00",                                          # truncated header
])
async def test_broken_requests_close_that_connection_only(spool: Path, data: bytes) -> None:
    server = await serve(spool)
    try:
        assert await in_thread(raw, spool, data) == b""
        assert (await in_thread(request, spool, "echo"))["verb"] == "echo"
    finally:
        await server.stop()


async def test_refusals_are_answers_with_a_status(spool: Path) -> None:
    server = await serve(spool)
    try:
        for verb, status in [("nosuch", wire.USAGE), ("refuse", wire.NOT_FOUND),
                             ("broken", wire.TEMPFAIL)]:
            with pytest.raises(ControlFailed) as e:
                await in_thread(request, spool, verb)
            assert e.value.status == status, verb
        body = await in_thread(lambda: request(spool, "open", [], body=b"x" * 100))
        assert body["body"] == 100
        with pytest.raises(ControlFailed) as e:
            await in_thread(lambda: request(spool, "open", [], body=b"x" * 101))
        assert e.value.status == wire.DATAERR
        with pytest.raises(ControlFailed) as e:       # a body where none is taken
            await in_thread(lambda: request(spool, "echo", [], body=b"x"))
        assert e.value.status == wire.USAGE
    finally:
        await server.stop()


def as_nobody(spool: Path, verb: str) -> dict:  # type: ignore[type-arg]
    """Connect from a child that became `nobody`: the kernel's credentials."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            answer = raw(spool, wire.encode({"verb": verb, "args": []}))
            os.write(write, answer)
        finally:
            os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    return frames(data)[-1]


async def test_other_users_get_only_the_verbs_open_to_anyone(spool: Path) -> None:
    assert os.geteuid() == 0, "this test changes uid: it runs as root (make test does)"
    server = await serve(spool)
    try:
        denied = await in_thread(as_nobody, spool, "echo")
        assert denied["ok"] is False and denied["status"] == wire.DENIED
        allowed = await in_thread(as_nobody, spool, "open")
        assert allowed["ok"] is True and allowed["result"]["uid"] == NOBODY
    finally:
        await server.stop()


async def test_unreachable_daemon_is_its_own_status(spool: Path) -> None:
    with pytest.raises(ControlFailed) as e:
        await in_thread(request, spool, "echo")
    assert e.value.status == "unavailable"
    assert "control.sock" in e.value.text


@pytest.mark.parametrize("words,verb,rest", [
    (["sh", "q"], "show queue", []),
    (["show", "queue", "1a2b3c4d"], "show queue", ["1a2b3c4d"]),
    (["sh", "env", "1a2b3c4d00000001"], "show envelope", ["1a2b3c4d00000001"]),
    (["p", "sm"], "pause smtp", []),
    (["res", "ro", "3"], "resume route", ["3"]),
    (["show", "hosts"], "show hosts", []),
    (["STOP"], "stop", []),
])
def test_unique_prefixes(words: list[str], verb: str, rest: list[str]) -> None:
    assert match_verb(words) == (verb, rest)


@pytest.mark.parametrize("words,message", [
    (["s"], "ambiguous"), (["sh"], "incomplete"), (["frobnicate"], "unknown"),
    (["pause", "x"], "unknown"),
])
def test_bad_verbs(words: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        match_verb(words)


async def test_a_long_listing_draws_a_progress_bar_on_a_terminal_only(spool: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`ctl show queue` of a big queue: the pieces move a bar on a terminal's
    stderr; on a pipe nothing but the lines."""
    import argparse
    import pty

    from postillion.control import ctl

    async def listing(request, answer):  # type: ignore[no-untyped-def]
        env = {"evpid": "1a2b3c4d00000001", "family": "local", "type": "mda", "flags": [],
               "sender": "a@example.test", "rcpt": "b@example.test", "dest": "b@example.test",
               "ctime": 1, "expire": 2, "lasttry": 0, "retries": 0, "runstate": "pending",
               "runstate-secs": 5, "error": ""}
        for done in (200, 400):
            await answer.part({"total": 600, "done": done, "envelopes": [env]})
        return {"total": 600, "done": 600, "envelopes": [env]}

    server = ControlServer(bind_control(spool, os.getuid(), os.getgid()),
                           {"show queue": Verb(listing)})
    await server.start()
    master, slave = pty.openpty()
    try:
        with open(slave, "w", closefd=False) as terminal:
            monkeypatch.setattr("sys.stderr", terminal)
            args = argparse.Namespace(spool=str(spool), json=False)
            assert await in_thread(ctl.show_queue, args, []) == ctl.EXIT_OK
        drawn = os.read(master, 65536).decode()
        assert "scanning the queue [" in drawn and "100%" in drawn, drawn
        import io
        piped = io.StringIO()
        monkeypatch.setattr("sys.stderr", piped)
        assert await in_thread(ctl.show_queue, args, []) == ctl.EXIT_OK
        assert piped.getvalue() == ""
    finally:
        os.close(master)
        os.close(slave)
        await server.stop()
