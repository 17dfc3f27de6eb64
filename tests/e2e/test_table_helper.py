"""A table helper in a running daemon (`table NAME X:CONFIG` -> `table-X`,
or `proc:`): the processes open their tables as root, before they drop to
the queue user, yet the helper never runs as root."""

from __future__ import annotations

import os
import pwd
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from postillion.table.registry import LIBEXEC_ENV
from tests.e2e import procs
from tests.e2e.conftest import virtual_world
from tests.table.conftest import shared_helper

QUEUE_USER = "_postillion"


@pytest.fixture
def libexec(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    with shared_helper({"services": ["alias"], "map": {"root": "alice@example.test"},
                        "sources": []}) as top:
        monkeypatch.setenv(LIBEXEC_ENV, str(top))
        yield top


def test_helpers_run_as_the_queue_user_and_answer(libexec: Path) -> None:
    assert os.geteuid() == 0, "the test checks the drop from root: run the suite as root"
    extra = (f"table aliases json:{libexec / 'data.json'}\n"
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
