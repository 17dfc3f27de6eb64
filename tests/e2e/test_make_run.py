"""`make run`'s embedded default: `postillion run` with no -f, in a fresh
directory, writes the demo under ./var and delivers to alice's Maildir."""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.e2e.conftest import free_port


def test_demo_from_nothing_delivers_to_alice():
    # Not under pytest's 0700 tmp_path: deliveries run as an unprivileged uid.
    cwd = Path(tempfile.mkdtemp(prefix="postillion-demo-", dir="/tmp"))
    os.chmod(cwd, 0o755)
    port = free_port()
    log = open(cwd / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "postillion.cli", "run", "-d",
                             "-D", f"port={port}"], cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (cwd / "daemon.log").read_text()
            try:
                client = smtplib.SMTP("127.0.0.1", port, timeout=10)
                break
            except OSError:
                assert time.monotonic() < deadline, (cwd / "daemon.log").read_text()
                time.sleep(0.05)
        with client:
            client.sendmail("bob@example.test", ["postmaster@example.test"],
                            b"Subject: hi\r\n\r\nhello\r\n")
        new = cwd / "var/mail/example.test/alice/Maildir/new"
        while not (new.exists() and any(new.iterdir())):
            assert time.monotonic() < deadline + 20, (cwd / "daemon.log").read_text()
            time.sleep(0.05)
        for name in ("postillion.conf", "sqlite.conf", "tables.sqlite"):
            assert (cwd / "var" / name).is_file()
        assert 'port = "2525"' in (cwd / "var/postillion.conf").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        log.close()
        shutil.rmtree(cwd, ignore_errors=True)
