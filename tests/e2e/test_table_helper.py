"""A table helper in a running daemon (`table NAME X:CONFIG` -> `table-X`,
or `proc:`): the processes open their tables as root, before they drop to
the queue user, yet the helper never runs as root."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import smtplib
import tempfile
from pathlib import Path

import pytest

from postillion.table.registry import LIBEXEC_ENV
from tests import sysvenv
from tests.e2e import procs
from tests.e2e.conftest import virtual_world
from tests.table.conftest import PROC_HELPER

QUEUE_USER = "_postillion"


@pytest.fixture
def libexec(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A helper directory every user can read, holding `table-json`: the
    test helper under the system's Python (the suite's may be root's own)."""
    top = Path(tempfile.mkdtemp(prefix="postillion-libexec-", dir="/tmp"))
    top.chmod(0o755)
    shutil.copy(PROC_HELPER, top / "proc_helper.py")
    (top / "proc_helper.py").chmod(0o644)
    program = top / "table-json"
    program.write_text(f"#!/bin/sh\nexec {sysvenv.system_python()} {top / 'proc_helper.py'} \"$@\"\n")
    program.chmod(0o755)
    data = top / "aliases.json"
    data.write_text(json.dumps({"services": ["alias"], "map": {"root": "alice@example.test"},
                                "sources": []}))
    data.chmod(0o644)
    monkeypatch.setenv(LIBEXEC_ENV, str(top))
    yield top
    shutil.rmtree(top, ignore_errors=True)


def test_helpers_run_as_the_queue_user_and_answer(libexec: Path) -> None:
    assert os.geteuid() == 0, "the test checks the drop from root: run the suite as root"
    extra = (f"table aliases json:{libexec / 'aliases.json'}\n"
             'action "aliased" mbox alias <aliases>\n'
             'match from any for domain aliased.test action "aliased"\n')
    with virtual_world("postillion-helper-", extra=extra) as d:
        d.start()
        helpers = [pid for pid in procs.children(d.proc.pid)
                   if "proc_helper.py" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]
        assert helpers, "no helper running"
        queue_uid = pwd.getpwnam(QUEUE_USER).pw_uid
        for pid in helpers:
            status = Path(f"/proc/{pid}/status").read_text()
            uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
            assert set(map(int, uids)) == {queue_uid}, (pid, uids)
        with smtplib.SMTP(d.host, d.port, timeout=10) as client:
            client.ehlo("client.example.net")
            client.mail("someone@example.net")
            code, text = client.rcpt("root@aliased.test")
            assert code == 250, text
