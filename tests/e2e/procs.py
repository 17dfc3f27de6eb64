"""Reading the daemon's processes from /proc: who they are, what they hold."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def children(pid: int) -> list[int]:
    """Every live descendant of `pid`."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    out, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == current]
        out += kids
        frontier += kids
    return out


def argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def roles(pid: int, name: str) -> list[int]:
    """The daemon's role processes of one kind ("smtp", "queue")."""
    return [p for p in children(pid) if "postillion.daemon.roles" in argv(p) and name in argv(p)]


def status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def tcp_sockets() -> list[tuple[int, str, int]]:
    """(local port, state, inode) of every TCP socket in /proc/net/tcp{,6}:
    state "0A" is LISTEN, "01" ESTABLISHED."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            out.append((int(fields[1].rsplit(":", 1)[1], 16), fields[3], int(fields[9])))
    return out


def established(port: int) -> set[int]:
    """Inodes of ESTABLISHED TCP sockets whose local port is `port` (server side)."""
    return {inode for local, state, inode in tcp_sockets()
            if state == "01" and local == port and inode}


def listening_ports(pid: int) -> set[int]:
    """The TCP ports `pid` holds a listening socket on."""
    mine = socket_inodes(pid)
    return {local for local, state, inode in tcp_sockets() if state == "0A" and inode in mine}


def holders(daemon_pid: int, port: int) -> dict[int, int]:
    """Processes of the daemon holding client connections on `port`: pid -> count."""
    conns = established(port)
    out = {}
    for pid in [daemon_pid, *children(daemon_pid)]:
        held = len(socket_inodes(pid) & conns)
        if held:
            out[pid] = held
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """The pids still alive after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    return [p for p in pids if alive(p)]


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def listening(port: int) -> set[int]:
    """Inodes of the LISTEN sockets on local port `port` (a reload that
    keeps a listener keeps its inode)."""
    return {inode for local, state, inode in tcp_sockets()
            if state == "0A" and local == port and inode}
