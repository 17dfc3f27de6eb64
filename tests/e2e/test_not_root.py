"""Not root at all: a normal user starts the daemon (a developer's `make
run`, as that user), every process runs as that user, and mail is delivered
as that user.  Postillion runs from a system-wide install (tests/sysvenv.py),
because the suite's own interpreter may sit where only root can go."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import smtplib
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests import sysuser
from tests.e2e import procs
from tests.e2e.conftest import free_port


@pytest.fixture(scope="module")
def venv(system_venv: Path) -> Path:
    return system_venv


def normal_user() -> contextlib.AbstractContextManager[pwd.struct_passwd]:
    return sysuser.shell_user("pdev")


def test_a_normal_user_runs_every_process_as_itself_and_delivers_as_itself(venv):
    assert os.geteuid() == 0, "the test makes a user and switches to it: run the suite as root"
    with normal_user() as user:
        work = Path(tempfile.mkdtemp(prefix="postillion-user-"))
        work.chmod(0o755)
        os.chown(work, user.pw_uid, user.pw_gid)
        port = free_port()
        log = work / "daemon.log"
        argv = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
                "--", str(venv / "bin/postillion"), "run", "--demo", "-d", "-D", f"port={port}"]
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, cwd=work, stdout=out, stderr=subprocess.STDOUT,
                                    env={"PATH": "/usr/bin:/bin", "HOME": str(work)},
                                    start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while "postillion ready" not in log.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.sendmail("bob@example.test", ["alice@example.test"],
                                b"Subject: as a user\r\n\r\nhello\r\n")
                # A session is open: every process of the daemon is the user.
                tree = [proc.pid, *procs.children(proc.pid)]
                assert len(procs.roles(proc.pid, "smtp")) >= 1
                assert len(procs.roles(proc.pid, "queue")) == 1
                for pid in tree:
                    uids = procs.status(pid)["Uid"].split()
                    assert set(uids) == {str(user.pw_uid)}, (pid, procs.argv(pid), uids)
            new = work / "var/mail/example.test/alice/Maildir/new"
            deadline = time.monotonic() + 20
            while not (new.is_dir() and any(new.iterdir())):
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            [message] = list(new.iterdir())
            assert os.stat(message).st_uid == user.pw_uid
            assert b"as a user" in message.read_bytes()
            deadline = time.monotonic() + 10        # the log line comes just after the file
            while "result=Ok stat=Delivered" not in (text := log.read_text()):
                assert time.monotonic() < deadline, text
                time.sleep(0.05)
            assert f"as uid {user.pw_uid}" in text
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    proc.wait(timeout=5)
            shutil.rmtree(work, ignore_errors=True)


def test_route_run_by_a_normal_user_says_a_forward_it_cannot_read_is_the_daemons_to_read(venv):
    """`postillion route` reads a `.forward` in its own process: a normal
    user cannot enter another user's 0700 home, so the expansion stops
    there (451, exit 2) and the output says that the daemon, reading as
    root, would see the file."""
    assert os.geteuid() == 0, "the test makes a user and switches to it: run the suite as root"
    with normal_user() as user:
        work = Path(tempfile.mkdtemp(prefix="postillion-route-"))
        try:
            work.chmod(0o755)
            home = work / "carol"
            home.mkdir(mode=0o700)
            (home / ".forward").write_text("carol\n")
            os.chown(home / ".forward", 2002, 2002)
            os.chown(home, 2002, 2002)
            (work / "users").write_text(f"carol 2002:2002:{home}\n")
            conf = work / "smtpd.conf"
            conf.write_text(f"table users file:{work / 'users'}\n"
                            'action "local" mbox userbase <users>\n'
                            'match from local for local action "local"\n')
            argv = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                    "--clear-groups", "--", str(venv / "bin/postillion"), "route", "-f",
                    str(conf), "carol@localhost"]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                                  env={"PATH": "/usr/bin:/bin", "HOME": str(work)})
            assert done.returncode == 2, done.stdout + done.stderr
            assert "RCPT TO:<carol@localhost>: 451 4.2.4" in done.stdout
            assert f"{home}/.forward: Permission denied" in done.stdout
            assert f"route runs as uid {user.pw_uid}, the daemon reads .forward files as root" \
                in done.stdout
        finally:
            shutil.rmtree(work, ignore_errors=True)
