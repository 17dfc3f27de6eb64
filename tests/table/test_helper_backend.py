"""`table NAME X:CONFIG` with a backend Postillion does not know runs the
helper `table-X` from the helper directories as a `proc` table, with CONFIG
as its argument, as OpenSMTPD runs its libexec table helpers; without such
a helper the declaration is an error naming where it looked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from postillion.table import Service
from postillion.table.errors import TableError
from postillion.table.registry import LIBEXEC_ENV, helper
from postillion.table.table import open_table
from tests.table.conftest import PROC_HELPER

DATA = {"services": ["alias"], "map": {"root": "alice, bob"}, "sources": []}


@pytest.fixture
def libexec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A helper directory holding `table-json`: our proc helper, whose one
    argument (the table's CONFIG) names its data file."""
    directory = tmp_path / "libexec"
    directory.mkdir()
    program = directory / "table-json"
    program.write_text(f"#!/bin/sh\nexec {sys.executable} {PROC_HELPER} \"$@\"\n")
    program.chmod(0o755)
    (tmp_path / "data.json").write_text(json.dumps(DATA))
    monkeypatch.setenv(LIBEXEC_ENV, str(directory))
    return directory


async def test_an_unknown_backend_runs_its_helper_as_a_proc_table(libexec: Path, tmp_path: Path) -> None:
    table = open_table("aliases", "json", str(tmp_path / "data.json"))
    await table.open()
    try:
        assert table.backend.name == "proc"
        assert table.backend.argv == [str(libexec / "table-json"), str(tmp_path / "data.json")]
        assert await table.lookup(Service.ALIAS, "root") is not None
    finally:
        await table.close()


def test_no_helper_is_an_error_naming_where_it_looked(libexec: Path) -> None:
    with pytest.raises(TableError, match=f'unknown backend "nosuch".*no helper table-nosuch in {libexec}'):
        open_table("t", "nosuch", "x")


@pytest.mark.parametrize("name", ["../json", "js/on", "json x", ""])
def test_a_backend_name_never_walks_out_of_the_helper_directories(libexec: Path, name: str) -> None:
    assert helper(name) is None


def test_table_lookup_through_a_helper_from_the_command_line(libexec: Path, tmp_path: Path) -> None:
    conf = tmp_path / "postillion.conf"
    conf.write_text(f'table aliases json:{tmp_path / "data.json"}\n'
                    'listen on 127.0.0.1 port 2599\n'
                    'action "local" mbox alias <aliases>\n'
                    'match from local for local action "local"\n')
    done = subprocess.run([sys.executable, "-m", "postillion.cli", "table", "lookup", "-f", str(conf),
                           "aliases", "alias", "root"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, LIBEXEC_ENV: str(libexec)})
    assert done.returncode == 0, done.stderr
    assert "alice" in done.stdout and "bob" in done.stdout
    done = subprocess.run([sys.executable, "-m", "postillion.cli", "check", "-f", str(conf)],
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != LIBEXEC_ENV})
    assert done.returncode == 1 and "no helper table-json" in done.stderr
