"""`postillion ctl` as a normal user, from the system-wide install
(tests/sysvenv.py, as docs/install.md installs /opt/postillion): the
daemon's control socket answers it by its uid (SO_PEERCRED).  It sees only
the mail it enqueued itself -- none of the mail submitted over SMTP -- and
is refused every administrator's verb; `encrypt` needs no daemon.
"""

from __future__ import annotations

import os
import pwd
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import sysuser
from tests.control.ctlrun import ctl, ok, ok_json, until
from tests.e2e.conftest import Daemon, virtual_world


@pytest.fixture(scope="module")
def venv(system_venv: Path) -> Path:
    return system_venv


@pytest.fixture(scope="module")
def user() -> Iterator[pwd.struct_passwd]:
    assert os.geteuid() == 0, "the test makes a user and switches to it: run the suite as root"
    with sysuser.shell_user("pctl") as entry:
        yield entry


@pytest.fixture(scope="module")
def held() -> Iterator[Daemon]:
    """A daemon started with `-P mda`: what is sent stays queued."""
    with virtual_world("postillion-ctluser-") as d:
        d.start("-P", "mda")
        for rcpt in ("alice@example.test", "bob@example.test"):
            with smtplib.SMTP(d.host, d.port, timeout=10) as client:
                client.sendmail("bob@example.test", [rcpt], b"Subject: theirs\r\n\r\nx\r\n")
        yield d


def as_user(venv: Path, user: pwd.struct_passwd) -> dict:
    return {"prefix": ("setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                       "--clear-groups", "--", str(venv / "bin/postillion")),
            "env": {"PATH": "/usr/bin:/bin", "HOME": "/"}}


def test_a_normal_user_sees_none_of_the_smtp_mail_and_may_not_administer(held, venv, user):
    queued = until(lambda: len(q := ok_json(held.spool, "show queue")) == 2 and q, "two queued")
    assert ok_json(held.spool, "show status")["paused"] == ["mda"]
    them = as_user(venv, user)
    assert ok(held.spool, "show", "queue", **them) == ""
    assert ok_json(held.spool, "show queue", **them) == []
    assert ok(held.spool, "sh", "q", **them) == ""
    for verb in ("envelope", "message"):
        done = ctl(held.spool, "show", verb, queued[0]["evpid"], **them)
        assert done.returncode == 1 and "no such envelope" in done.stderr, done.stderr
    for words in (("pause", "mda"), ("stop",), ("show", "stats"), ("remove", "all"), ("monitor",)):
        done = ctl(held.spool, *words, **them)
        assert done.returncode == 1 and "permission denied" in done.stderr, (words, done.stderr)
    assert ok(held.spool, "encrypt", "secret", **them).startswith("$")
    assert ok_json(held.spool, "encrypt", "secret", **them)["encrypted"].startswith("$")
    # the administrator still sees both, and stops the daemon
    assert len(ok_json(held.spool, "show queue")) == 2
    assert "stopping: yes" in ok(held.spool, "stop")
    held.proc.wait(timeout=20)
