"""The log under systemd: stderr is then a journal stream (JOURNAL_STREAM
names its device and inode).  Each line is written once, to one place: to
/dev/log (journald's syslog socket) without `-d`, as the unit runs it, and
to the stream with `-d`, without a second time stamp and with its priority
as an `<N>` prefix (sd-daemon(3)).  A variable inherited with a stderr that
is not that stream changes nothing."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.conftest import daemon  # noqa: F401  (the fixture)

EMIT = """
import logging, sys
from postillion import log
print(log.setup(foreground=sys.argv[1] == "fg", syslog_socket=sys.argv[2]), file=sys.stdout)
log.smtp_connected("0123456789abcdef", "192.0.2.1", "client.example")
logging.getLogger("postillion.parent").warning("two\\nlines")
"""


def journal_stream(path: Path) -> str:
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}"


def emit(tmp_path: Path, mode: str, syslog: Path, journal: str | None) -> tuple[str, str]:
    """Run log.setup in a fresh process whose stderr is a file; returns
    (where setup said the log goes, what reached stderr)."""
    err = tmp_path / f"stderr-{mode}"
    err.write_bytes(b"")
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal is not None:
        env["JOURNAL_STREAM"] = journal_stream(err) if journal == "this" else journal
    with open(err, "r+b") as stderr:
        done = subprocess.run([sys.executable, "-c", EMIT, mode, str(syslog)], env=env,
                              stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=30)
    assert done.returncode == 0, err.read_text()
    return done.stdout.strip(), err.read_text()


def test_without_d_every_line_goes_to_syslog_once_and_nothing_to_the_stream(tmp_path):
    path = tmp_path / "dev-log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind(str(path))
        where, stderr = emit(tmp_path, "bg", path, journal="this")
        syslog.settimeout(5)
        lines = [syslog.recv(4096).decode(), syslog.recv(4096).decode()]
        syslog.settimeout(0.2)
        try:
            extra = syslog.recv(4096)
        except TimeoutError:
            extra = b""
    assert where == "syslog" and stderr == "" and extra == b""
    # Facility mail (2): <22> is mail.info, <20> mail.warning.
    assert lines[0].startswith("<22>postillion[") and "smtp connected" in lines[0]
    assert lines[1].startswith("<20>postillion[")


def test_with_d_on_the_journal_stream_lines_carry_priorities_not_times(tmp_path):
    missing = tmp_path / "no-syslog"
    where, stderr = emit(tmp_path, "fg", missing, journal="this")
    assert where == "journal"
    assert stderr.splitlines() == [
        "<6>0123456789abcdef smtp connected address=192.0.2.1 host=client.example",
        "<4>two", "<4>lines"]
    # The variable alone (stderr redirected elsewhere): the plain layout.
    where, stderr = emit(tmp_path, "fg", missing, journal="1:2")
    assert where == "stderr"
    assert re.match(r"[A-Z][a-z]{2} \d\d \d\d:\d\d:\d\d 0123456789abcdef smtp connected", stderr)


def test_the_daemon_and_its_roles_write_each_line_once_to_the_stream(daemon):  # noqa: F811
    # Daemon.start writes the log to daemon-0.log: make it first, so that
    # its inode can be the journal stream the daemon is told about.
    log_file = daemon.root / "daemon-0.log"
    log_file.write_bytes(b"")
    os.environ["JOURNAL_STREAM"] = journal_stream(log_file)
    try:
        daemon.start()
    finally:
        del os.environ["JOURNAL_STREAM"]
    with socket.create_connection((daemon.host, daemon.port), timeout=5) as client:
        client.settimeout(5)
        assert client.recv(4096).startswith(b"220")
        client.sendall(b"QUIT\r\n")
        client.recv(4096)
    daemon.wait_log("smtp disconnected")
    # A role that dies is a warning the journal can filter on: the last
    # process the parent started is an smtp process.
    pid = daemon.proc.pid
    smtp = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[-1])
    os.kill(smtp, signal.SIGKILL)
    daemon.wait_log("restarting it in")
    time.sleep(0.1)
    lines = daemon.log().splitlines()
    assert lines and all(re.match(r"<[2-7]>", line) for line in lines), lines
    assert sum("postillion ready" in line for line in lines) == 1, lines
    # Each session (ours, and the fixture's probes) is logged once, by the
    # smtp process that had it: no line comes twice.
    sessions = [line.split()[0] for line in lines if " smtp connected " in line]
    assert sessions and len(sessions) == len(set(sessions)), lines
    assert len(lines) == len(set(lines)), "\n".join(lines)
    [restart] = [line for line in lines if "restarting it in" in line]
    assert restart.startswith("<4>"), restart
