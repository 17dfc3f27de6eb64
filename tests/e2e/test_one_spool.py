"""One spool, one daemon: a second daemon on a spool in use refuses to start
(naming the spool and the holder's pid) and touches nothing; a daemon that
cannot bind its port delivers nothing."""

from __future__ import annotations

import smtplib
import socket
import subprocess
import sys
import time

from tests.e2e.conftest import free_port


def send(d, n: int) -> None:
    with smtplib.SMTP(d.host, d.port, timeout=10) as client:
        for i in range(n):
            client.sendmail("bob@example.test", ["alice@example.test"],
                            f"Subject: {i}\r\n\r\nbody {i}\r\n".encode())


def run_second(d, config) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "postillion.cli", "run", "-d", "-f", str(config),
                           "-s", str(d.spool)], capture_output=True, text=True, timeout=60)


def test_second_daemon_on_the_same_spool_refuses_and_delivers_nothing(daemon):
    daemon.start("-P", "mda")            # holds its queue: accepted, not delivered
    send(daemon, 5)
    # Same spool, another port: it would bind fine, and must still refuse.
    other = daemon.root / "other.conf"
    other.write_text(daemon.config.read_text().replace(f"port {daemon.port}",
                                                       f"port {free_port()}"))
    result = run_second(daemon, other)
    assert result.returncode == 1
    assert f"queue {daemon.spool} is in use by another postillion (pid {daemon.proc.pid})" \
        in result.stderr
    # Same port too: the refusal comes first, before any delivery or bind.
    result = run_second(daemon, daemon.config)
    assert result.returncode == 1 and "is in use by another postillion" in result.stderr
    time.sleep(0.5)
    assert daemon.delivered("alice") == []
    daemon.stop()
    daemon.start()                      # the lock died with the holder: a restart delivers
    assert len(daemon.wait_delivered("alice", 5)) == 5
    daemon.stop()
    time.sleep(0.3)
    assert len(daemon.delivered("alice")) == 5   # exactly once each


def test_a_daemon_that_cannot_bind_delivers_nothing(daemon):
    daemon.start("-P", "mda")
    send(daemon, 2)
    daemon.stop()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((daemon.host, daemon.port))
        squatter.listen()
        result = run_second(daemon, daemon.config)
    assert result.returncode == 1
    assert "cannot listen on 127.0.0.1" in result.stderr and "Address already in use" in result.stderr
    assert daemon.delivered("alice") == []
    daemon.start()
    assert len(daemon.wait_delivered("alice", 2)) == 2
