"""The first five minutes: `make run` as root in a private (0700) directory,
under sudo, on another port; `postillion run` without -f reads
/etc/postillion and never writes a demo; workers die with the daemon."""

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

import pytest

from tests.e2e.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent


def wait_smtp(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30) -> smtplib.SMTP:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            return smtplib.SMTP("127.0.0.1", port, timeout=10)
        except OSError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)


def wait_file(directory: Path, log: Path, timeout: float = 20) -> list[Path]:
    deadline = time.monotonic() + timeout
    while not (directory.exists() and any(directory.iterdir())):
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return sorted(directory.iterdir())


def stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def private_checkout() -> Path:
    """A fresh 0700 directory holding what `make run` reads of a clone (the
    Makefile and pyproject.toml), with the test's own venv standing in for
    the one `make` would build: as a clone in /root would be."""
    top = Path(tempfile.mkdtemp(prefix="postillion-private-"))   # mode 0700, root's
    checkout = top / "postillion"
    checkout.mkdir()
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, checkout / name)
        os.utime(checkout / name, (0, 0))     # older than the venv's stamp: no rebuild
    return checkout


@pytest.mark.parametrize("sudo", [None, "daemon"], ids=["root", "sudo"])
def test_make_run_as_root_in_a_0700_directory_delivers(sudo):
    assert os.geteuid() == 0, "this test checks the root case: run the suite as root (CI does)"
    assert (VENV / ".installed").exists(), "the suite runs from `make test`'s venv"
    checkout = private_checkout()
    assert os.stat(checkout.parent).st_mode & 0o777 == 0o700
    env = dict(os.environ)
    for key in ("SUDO_UID", "SUDO_GID", "SUDO_USER"):
        env.pop(key, None)
    if sudo is not None:
        import pwd
        entry = pwd.getpwnam(sudo)
        env.update(SUDO_UID=str(entry.pw_uid), SUDO_GID=str(entry.pw_gid), SUDO_USER=sudo)
    port = free_port()
    log = checkout / "make.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["make", "--no-print-directory", "run", f"PORT={port}",
                                 f"VENV={VENV}"], cwd=checkout, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with wait_smtp(port, proc, log) as client:
            client.sendmail("bob@example.test", ["postmaster@example.test"],
                            b"Subject: hi\r\n\r\nhello\r\n")
        [message] = wait_file(checkout / "var/mail/example.test/alice/Maildir/new", log)
        owner = os.stat(message).st_uid
        expected = int(env["SUDO_UID"]) if sudo else 65534
        assert owner == expected != 0
        deadline = time.monotonic() + 10   # the log line comes just after the file
        while "result=Ok stat=Delivered" not in (text := log.read_text()):
            assert time.monotonic() < deadline, text
            time.sleep(0.02)
        assert f"listening on 127.0.0.1:{port}" in text
    finally:
        stop_group(proc)
        shutil.rmtree(checkout.parent, ignore_errors=True)


def test_run_without_f_reads_etc_and_writes_no_demo():
    cwd = Path(tempfile.mkdtemp(prefix="postillion-nodemo-"))
    try:
        assert not Path("/etc/postillion/postillion.conf").exists()
        result = subprocess.run([sys.executable, "-m", "postillion.cli", "run", "-d"], cwd=cwd,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 1
        assert "/etc/postillion/postillion.conf" in result.stderr
        assert "--demo" in result.stderr
        assert list(cwd.iterdir()) == []          # no ./var, no demo
    finally:
        shutil.rmtree(cwd, ignore_errors=True)


def worker_pids(daemon_pid: int) -> list[int]:
    """Delivery workers started by that daemon (their argv names it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"postillion.mda.worker" in argv and str(daemon_pid).encode() in argv:
            pids.append(int(entry.name))
    return pids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_die_within_a_second_of_the_daemon():
    cwd = Path(tempfile.mkdtemp(prefix="postillion-orphans-"))
    port = free_port()
    log = cwd / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "postillion.cli", "run", "--demo", "-d",
                                 "-D", f"port={port}"], cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        with wait_smtp(port, proc, log) as client:
            client.sendmail("bob@example.test", ["alice@example.test"], b"Subject: a\r\n\r\na\r\n")
        wait_file(cwd / "var/mail/example.test/alice/Maildir/new", log)
        workers = worker_pids(proc.pid)
        assert workers, log.read_text()
        proc.send_signal(signal.SIGKILL)         # the daemon alone
        proc.wait(timeout=10)
        deadline = time.monotonic() + 2
        while any(alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in workers if alive(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(cwd, ignore_errors=True)
