"""systemd's readiness protocol (sd_notify): a real `postillion run` tells a
datagram socket the test binds, as systemd's would be, READY=1 once mail can
be taken, RELOADING=1 then READY=1 around a reload (SIGHUP), and
STOPPING=1 on SIGTERM -- and only the parent ever speaks.

The kernel stamps each datagram with its sender's pid (SO_PASSCRED), so
"only the parent" is checked on the wire, not taken on trust.
"""

from __future__ import annotations

import os
import socket
import struct
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from postillion import sdnotify
from tests.e2e.conftest import daemon  # noqa: F401  (the fixture)

#: struct ucred: pid, uid, gid.
UCRED = struct.Struct("iII")


@dataclass(frozen=True)
class Datagram:
    pid: int
    fields: dict[str, str]
    at: float          # time.monotonic() when received


def manager_socket(address: str | bytes) -> socket.socket:
    """A datagram socket like systemd's notify socket, passing credentials."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    return sock


def receive(sock: socket.socket, timeout: float) -> Datagram | None:
    sock.settimeout(timeout)
    try:
        data, ancillary, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
    except TimeoutError:
        return None
    at = time.monotonic()
    pids = [UCRED.unpack(cdata[:UCRED.size])[0] for level, kind, cdata in ancillary
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS]
    assert len(pids) == 1, f"no sender credentials on {data!r}"
    lines = data.decode().splitlines()
    fields = dict(line.split("=", 1) for line in lines)
    assert len(fields) == len(lines), f"repeated or malformed lines: {data!r}"
    return Datagram(pids[0], fields, at)


def wait_for(sock: socket.socket, key: str, seen: list[Datagram], timeout: float) -> Datagram:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        got = receive(sock, left)
        if got is None:
            break
        seen.append(got)
        if key in got.fields:
            return got
    raise AssertionError(f"no {key}=1 within {timeout}s; got {seen}")


def greets(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=5) as client:
        client.settimeout(5)
        return client.recv(4).startswith(b"220")


def children(pid: int) -> list[int]:
    """Every process below `pid` (its roles and their children)."""
    found, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def test_ready_after_the_port_greets_stopping_on_sigterm_and_only_the_parent_speaks(
        daemon, tmp_path, monkeypatch):  # noqa: F811
    path = tmp_path / "notify"
    seen: list[Datagram] = []
    with manager_socket(str(path)) as manager:
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        daemon.start(wait=False)
        assert daemon.proc is not None
        pid = daemon.proc.pid

        ready = wait_for(manager, "READY", seen, timeout=30)
        # At READY, and not before, the daemon takes mail: a client connecting
        # now is greeted, and the parent has logged that every role is up.
        assert greets(daemon.host, daemon.port), daemon.log()
        assert "postillion ready" in daemon.log()
        assert ready.fields["READY"] == "1"
        assert ready.fields["MAINPID"] == str(pid)
        assert ready.fields["STATUS"].startswith("ready: ")
        assert [d.pid for d in seen] == [pid] * len(seen)

        # No role or worker inherited the socket's address.
        roles = children(pid)
        assert len(roles) >= 2, roles          # the queue and at least one smtp process
        for role in roles:
            environ = Path(f"/proc/{role}/environ").read_bytes().split(b"\0")
            assert not any(v.startswith(b"NOTIFY_SOCKET=") for v in environ), role

        # A reload is told as RELOADING=1, then READY=1 once it is done.
        daemon.proc.send_signal(1)
        reloading = wait_for(manager, "RELOADING", seen, timeout=30)
        assert reloading.pid == pid and "MONOTONIC_USEC" in reloading.fields
        again = wait_for(manager, "READY", seen, timeout=60)
        assert again.pid == pid and again.fields["STATUS"].startswith("ready: ")
        assert "applied" in daemon.log()

        daemon.proc.send_signal(15)
        stopping = wait_for(manager, "STOPPING", seen, timeout=15)
        assert stopping.pid == pid and stopping.fields["STOPPING"] == "1"
        daemon.proc.wait(timeout=30)
        while (late := receive(manager, 0.2)) is not None:
            seen.append(late)
    assert {d.pid for d in seen} == {pid}, seen
    assert [k for d in seen for k in d.fields if k in ("READY", "RELOADING", "STOPPING")] == \
        ["READY", "RELOADING", "READY", "STOPPING"]


def test_abstract_names_reload_pair_and_nothing_without_a_socket(monkeypatch):
    name = f"postillion-test-{uuid.uuid4().hex}"
    environ = {"NOTIFY_SOCKET": f"@{name}", "PATH": "/usr/bin"}
    notifier = sdnotify.Notifier.from_environ(environ)
    assert environ == {"PATH": "/usr/bin"}            # taken out for the children
    seen: list[Datagram] = []
    with manager_socket(b"\0" + name.encode()) as manager:
        with notifier.reload("ready: tables updated"):
            reloading = wait_for(manager, "RELOADING", seen, timeout=5)
            assert int(reloading.fields["MONOTONIC_USEC"]) > 0
        ready = wait_for(manager, "READY", seen, timeout=5)
    assert ready.fields == {"READY": "1", "MAINPID": str(os.getpid()),
                            "STATUS": "ready: tables updated"}

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    silent = sdnotify.Notifier.from_environ()
    assert not silent.enabled and silent.ready("ready") is False
    # An address that is no socket of ours is ignored, not a crash.
    assert sdnotify.parse_address("vsock:2:1234") is None
    assert sdnotify.Notifier.from_environ({"NOTIFY_SOCKET": "relative"}).enabled is False
