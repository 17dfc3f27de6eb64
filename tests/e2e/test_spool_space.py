"""A full spool: `queue min-free` at MAIL, and a full disk mid-DATA or at
commit answered `452 4.3.1` with the session kept and nothing half-queued.

The real daemon (`postillion run`) gets its spool on a 2 MiB tmpfs mounted
for the test; a filler file next to the spool takes the space away and gives
it back.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

MIN_FREE = 64 * 1024           # `queue min-free 64K` in the test's config
PAGE = 4096
FULL = "452 4.3.1 Insufficient system storage"


def free_space(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def leave_free(mount: Path, target: int) -> None:
    """Grow or shrink the filler so that `target` octets stay free on `mount`."""
    filler = mount / "filler"
    filler.touch()
    size = filler.stat().st_size
    want = size + free_space(mount) - target
    assert want >= 0 and want % PAGE == 0, (size, want)
    with open(filler, "r+b") as f:
        f.truncate(min(size, want))      # tmpfs frees the pages cut off
        f.seek(0, os.SEEK_END)
        while f.tell() < want:           # written, not sparse: pages are taken
            f.write(b"\0" * min(256 * 1024, want - f.tell()))
    assert abs(free_space(mount) - target) <= 2 * PAGE, free_space(mount)


def unmount(path: Path) -> None:
    """Unmount, retrying while a closing process still holds it; lazily at last."""
    for _ in range(50):
        if not os.path.ismount(path):
            return
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(path)], check=True, capture_output=True)


@pytest.fixture
def small_spool(daemon):
    """The daemon fixture with its spool on a fresh 2 MiB tmpfs; yields the mount."""
    mount = daemon.root / "spoolfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mount)],
                   check=True, capture_output=True)
    try:
        daemon.spool = mount / "spool"
        with open(daemon.config, "a") as f:
            f.write(f"queue min-free {MIN_FREE // 1024}K\n")
        yield mount
    finally:
        try:
            daemon.stop()          # it holds files (and its lock) on the mount
        finally:
            unmount(mount)


class Client:
    """Raw SMTP over a socket: one (last) reply line per command."""

    def __init__(self, daemon) -> None:
        self.sock = socket.create_connection((daemon.host, daemon.port), timeout=10)
        self.f = self.sock.makefile("rb")
        assert self.reply().startswith("220 ")

    def reply(self) -> str:
        while True:
            line = self.f.readline().decode()
            if line[3:4] != "-":
                return line.rstrip("\r\n")

    def cmd(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def transaction(self, size: int) -> str:
        """MAIL, RCPT, DATA with about `size` octets: the reply after the dot."""
        assert self.cmd("MAIL FROM:<bob@example.test>") == "250 2.0.0 Ok"
        assert self.cmd("RCPT TO:<alice@example.test>").startswith("250 2.1.5")
        assert self.cmd("DATA").startswith("354 ")
        line = b"x" * 998 + b"\r\n"
        self.sock.sendall(b"Subject: space\r\n\r\n" + line * (size // len(line)) + b".\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


def assert_nothing_half_queued(daemon) -> None:
    assert daemon.queued_files() == []      # no message, no envelope file
    assert os.listdir(daemon.spool / "incoming") == []


def test_full_spool_refuses_with_452_and_keeps_the_session(daemon, small_spool):
    daemon.start()
    client = Client(daemon)
    assert client.cmd("EHLO client.example.net").startswith("250 ")

    # 192K free, 64K reserve: MAIL passes, unless SIZE= says it won't fit.
    leave_free(small_spool, 192 * 1024)
    assert client.cmd("MAIL FROM:<bob@example.test> SIZE=150000") == FULL
    # A 1 MiB message fails mid-DATA: the partial message goes at once.
    assert client.transaction(1024 * 1024) == FULL
    assert_nothing_half_queued(daemon)
    assert client.cmd("RSET") == "250 2.0.0 Reset state"
    assert client.cmd("NOOP") == "250 2.0.0 Ok"
    # The same with a 1 MiB BDAT chunk (not LAST): refused, the next one too.
    assert client.cmd("MAIL FROM:<bob@example.test>") == "250 2.0.0 Ok"
    assert client.cmd("RCPT TO:<alice@example.test>").startswith("250 2.1.5")
    assert client.cmd("BDAT 1048576\r\n" + "x" * 1048574) == FULL
    assert_nothing_half_queued(daemon)
    assert client.cmd("BDAT 3 LAST\r\nx").startswith("503 5.5.1")
    assert client.cmd("RSET") == "250 2.0.0 Reset state"
    # 240K fits in the write buffer: the disk says no at the commit's flush.
    assert client.transaction(240 * 1024) == FULL
    assert "commit-failed" in daemon.log() and "No space left on device" in daemon.log()
    assert_nothing_half_queued(daemon)
    assert client.cmd("NOOP") == "250 2.0.0 Ok"

    # Below the reserve: MAIL itself is refused, the session goes on.
    leave_free(small_spool, 32 * 1024)
    assert client.cmd("MAIL FROM:<bob@example.test>") == FULL
    assert client.cmd("NOOP") == "250 2.0.0 Ok"

    # Space back: mail flows again, on the same connection, and is delivered.
    (small_spool / "filler").unlink()
    assert client.transaction(100 * 1024).startswith("250 2.0.0 ")
    assert client.cmd("QUIT").startswith("221 ")
    client.close()
    [path] = daemon.wait_delivered("alice")
    assert path.read_bytes().count(b"x" * 998) == 100 * 1024 // 1000
    assert daemon.delivered("bob") == []
