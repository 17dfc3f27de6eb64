"""fsutil.fsync_together: many flushes at once, each with its own outcome."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

from postillion import fsutil


def test_linux_aio_is_available_here():
    # CI runs on Linux x86_64: the queue's batches must get the one-call path.
    assert fsutil._ring() is not None


def test_each_flush_has_its_own_outcome(tmp_path):
    count = fsutil.AIO_SLOTS + 7  # more than one slice
    fds = [os.open(tmp_path / f"f{i}", os.O_WRONLY | os.O_CREAT, 0o600) for i in range(count)]
    directory = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    closed = os.dup(directory)
    os.close(closed)  # a descriptor number that is no longer open
    try:
        for fd in fds:
            os.write(fd, b"data")
        syncs = [(fd, True) for fd in fds[:50]] + [(closed, True), (directory, False)] + [(fd, True) for fd in fds[50:]]
        expected = [None] * 50 + [errno.EBADF] + [None] * (count - 49)
        assert [e and e.errno for e in fsutil.fsync_together(syncs)] == expected
        assert [e and e.errno for e in fsutil.fsync_each(syncs)] == expected  # the fallback agrees
        assert fsutil.fsync_together([]) == []
    finally:
        for fd in (*fds, directory):
            os.close(fd)


def test_a_forked_child_gets_its_own_context(tmp_path):
    """An AIO context is not inherited: a child flushes through a new one."""
    script = (
        "import os, sys\n"
        "from postillion import fsutil\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)\n"
        "assert fsutil.fsync_together([(fd, True)]) == [None]\n"
        "parent = fsutil._ring()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    ok = fsutil.fsync_together([(fd, True)]) == [None] and fsutil._ring() is not parent\n"
        "    os._exit(0 if ok and fsutil._ring() is not None else 1)\n"
        "assert os.waitpid(pid, 0)[1] == 0\n"
        "assert fsutil._ring() is parent\n")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "f")], check=True, timeout=30)
