"""`sendmail` as a local user runs it: the system-wide install
(tests/sysvenv.py, as docs/install.md's /opt/postillion) executed by an
unprivileged account, talking to a real daemon through control.sock in its
spool.  One daemon for the module; the last test restarts it with `-P mda`
to look at a queued envelope."""

from __future__ import annotations

import email
import email.policy
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from postillion.config.files import default_hostname
from tests import sysuser
from tests.e2e.conftest import DOMAIN, Daemon, virtual_world

#: Small, so that a message over it is cheap to send.
MAX_SIZE = 100_000


@pytest.fixture(scope="module")
def venv(system_venv: Path) -> Path:
    return system_venv


@pytest.fixture(scope="module")
def user() -> Iterator[pwd.struct_passwd]:
    assert os.geteuid() == 0, "the test makes a user and runs sendmail as it: run the suite as root"
    with sysuser.shell_user("psend") as entry:
        yield entry


@pytest.fixture(scope="module")
def mta() -> Iterator[Daemon]:
    with virtual_world("postillion-sendmail-", extra=f"smtp max-message-size {MAX_SIZE}\n") as d:
        d.start()
        yield d


def run_as(user: pwd.struct_passwd, venv: Path, spool: Path, program: str, *args: str,
           stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """`program` of the system-wide install, run as `user` with nothing of root's."""
    argv = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
            "--", str(venv / "bin" / program), *args]
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=60, cwd="/",
                          env={"PATH": "/usr/bin:/bin", "HOME": "/", "POSTILLION_SPOOL": str(spool)})


def parse(path: Path) -> email.message.EmailMessage:
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)  # type: ignore[return-value]


def test_dash_t_delivers_with_headers_added_and_bcc_removed(mta, venv, user):
    message = (b"To: Alice <alice@example.test>\n"
               b"Bcc: bob@example.test\n"
               b"Subject: from cron\n"
               b"\n"
               b"first line\n"
               b".\n"
               b"after a lone dot\n")
    done = run_as(user, venv, mta.spool, "sendmail", "-t", "-i", stdin=message)
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    [to_alice] = mta.wait_delivered("alice")
    [to_bob] = mta.wait_delivered("bob")
    for path in (to_alice, to_bob):
        raw = path.read_bytes()
        msg = parse(path)
        received = msg["Received"]
        assert f"from userid {user.pw_uid} user {user.pw_name}" in received, raw
        assert msg["Date"] and msg["Message-ID"], raw
        assert msg["From"] == f"{user.pw_name}@{default_hostname()}"
        assert msg["Return-Path"] == f"<{user.pw_name}@{default_hostname()}>"
        assert msg["Bcc"] is None and b"\nBcc:" not in raw.split(b"\n\n", 1)[0]
        assert raw.endswith(b"first line\n.\nafter a lone dot\n"), raw
    log = mta.wait_log(f"user={user.pw_name} uid={user.pw_uid}")
    assert "nrcpt=2" in log


def test_arguments_sender_and_full_name(mta, venv, user):
    before = set(mta.delivered("alice"))
    done = run_as(user, venv, mta.spool, "sendmail", "-oem", "-odi", "-B8BITMIME",
                  "-f", "lists@example.org", "-FCron Daemon", "alice@example.test",
                  stdin=b"Subject: no header From\n\nbody\n.\nnot sent: the dot ended it\n")
    assert done.returncode == 0, done.stderr
    # Maildir names follow the envelope, not the time: the new one is the
    # one that was not there before.
    [path] = set(mta.wait_delivered("alice", len(before) + 1)) - before
    msg = parse(path)
    assert msg["Return-Path"] == "<lists@example.org>"
    assert msg["From"] == "Cron Daemon <lists@example.org>"
    assert msg["Subject"] == "no header From"
    assert path.read_bytes().endswith(b"\nbody\n")
    # Any sender a user gives is taken, and the log says who gave it.
    mta.wait_log(f"user={user.pw_name} uid={user.pw_uid} with sender <lists@example.org>")


def test_usage_and_refusals_exit_with_sysexits(mta, venv, user):
    # No recipients: none given, or -t and no To:/Cc:/Bcc:.
    done = run_as(user, venv, mta.spool, "sendmail", stdin=b"Subject: x\n\nx\n")
    assert done.returncode == 64 and b"no recipients" in done.stderr
    done = run_as(user, venv, mta.spool, "sendmail", "-t", stdin=b"Subject: x\n\nx\n")
    assert done.returncode == 64 and b"no recipients" in done.stderr
    done = run_as(user, venv, mta.spool, "sendmail", "-q", "alice@example.test")
    assert done.returncode == 64 and b"unknown option -q" in done.stderr
    # One unknown recipient refuses the whole message: alice gets nothing.
    before = len(mta.delivered("alice"))
    done = run_as(user, venv, mta.spool, "sendmail", "alice@example.test", "nobody@example.test",
                  stdin=b"Subject: x\n\nx\n")
    assert done.returncode == 67, done.stderr
    assert done.stderr.decode().startswith("sendmail: 550 5.1.1 ") and \
        "<nobody@example.test>" in done.stderr.decode() and done.stderr.count(b"\n") == 1
    # More refused recipients than a remote client may have (max-rejected-rcpt,
    # 50): still a refusal naming them, never the 421 that cuts off a prober.
    unknown = [f"nobody{i}@example.test" for i in range(60)]
    done = run_as(user, venv, mta.spool, "sendmail", "alice@example.test", *unknown,
                  stdin=b"Subject: x\n\nx\n")
    assert done.returncode == 67, done.stderr
    assert b"<nobody0@example.test>" in done.stderr and b"and 40 more" in done.stderr
    # A domain no rule accepts: refused, not unknown.
    done = run_as(user, venv, mta.spool, "sendmail", "someone@elsewhere.invalid",
                  stdin=b"Subject: x\n\nx\n")
    assert done.returncode == 65, done.stderr
    # Over `max-message-size`.
    done = run_as(user, venv, mta.spool, "sendmail", "alice@example.test",
                  stdin=b"Subject: big\n\n" + (b"x" * 70 + b"\n") * (3 * MAX_SIZE // 71))
    assert done.returncode == 65, done.stderr
    assert b"exceeds" in done.stderr
    assert len(mta.delivered("alice")) == before
    # A line over the session's `max-data-line`.
    done = run_as(user, venv, mta.spool, "sendmail", "alice@example.test",
                  stdin=b"Subject: long\n\n" + b"y" * 70_000 + b"\n")
    assert (done.returncode, done.stderr) == (65, b"sendmail: 500 5.5.2 Line too long\n")
    # No daemon on that spool.
    empty = Path(tempfile.mkdtemp(prefix="postillion-nospool-"))
    try:
        empty.chmod(0o755)
        done = run_as(user, venv, empty, "sendmail", "alice@example.test", stdin=b"x\n")
        assert done.returncode == 69, done.stderr
        assert b"cannot reach the daemon" in done.stderr
    finally:
        shutil.rmtree(empty)


def test_mailq_shows_a_user_its_own_queued_mail(mta, venv, user):
    mta.stop()
    mta.start("-P", "mda")
    done = run_as(user, venv, mta.spool, "sendmail", "bob@example.test",
                  stdin=b"Subject: held\n\nx\n")
    assert done.returncode == 0, done.stderr
    done = run_as(user, venv, mta.spool, "postillion", "ctl", "show", "queue", "--json")
    assert done.returncode == 0, done.stderr
    [env] = json.loads(done.stdout)
    assert (env["username"], env["family"], env["rcpt"]) == \
        (user.pw_name, "local", f"bob@{DOMAIN}")
    assert env["sender"] == f"{user.pw_name}@{default_hostname()}"
    done = run_as(user, venv, mta.spool, "mailq")
    assert done.returncode == 0 and f"|bob@{DOMAIN}|".encode() in done.stdout, done
    done = run_as(user, venv, mta.spool, "sendmail", "-bp")       # Sendmail's mailq
    assert done.returncode == 0 and f"|bob@{DOMAIN}|".encode() in done.stdout, done
