"""`postillion check` exits 1 exactly when `postillion run` refuses the
configuration: over every config in the suite, and over the cases that used
to slip through (options not implemented yet, a missing sqlite backend config
or database, `tls` without a `pki`, a table file that cannot be read).

Run's side is the daemon's real `start` on a fresh spool; only the port is
replaced by 0, since these configs name ports like 25 that the machine's own
services may hold -- a taken port is a matter of the moment, not of the
configuration, and check does not claim to see it.  The addresses are kept:
`listen on lo`, `egress`, a name that resolves to nothing or an address
this machine does not have are refused by both, or by neither.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from pathlib import Path

import pytest

from postillion.cli import main
from postillion.config import ConfigError, load
from postillion.daemon import Daemon, StartupError
from postillion.smtp import server as server_module

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
SUITE_CONFIGS = sorted(
    p for p in [*TESTS.rglob("*.conf"), *(TESTS / "config" / "bad").rglob("smtpd.conf"),
                *(REPO / "conformance" / "cases").glob("*.conf")]
    if p.is_file())

BACKEND = """\
dbpath {db}
query_domain SELECT name FROM domains WHERE name = ?
query_alias SELECT target FROM virtuals WHERE address = ?
query_userinfo SELECT uid, gid, home FROM users WHERE name = ?
"""


def make_cases(root: Path) -> dict[str, Path]:
    """Configs for the refusals check used to miss, and one that runs."""
    db = root / "tables.sqlite"
    con = sqlite3.connect(db)
    con.executescript("CREATE TABLE domains (name TEXT); CREATE TABLE virtuals (address TEXT, "
                      "target TEXT); CREATE TABLE users (name TEXT, uid INT, gid INT, home TEXT);")
    con.close()
    (root / "sqlite.conf").write_text(BACKEND.format(db=db))
    (root / "sqlite-nodb.conf").write_text(BACKEND.format(db=root / "nosuch.sqlite"))
    (root / "a-directory").mkdir()
    sql = ("table domains sqlite:{b}\ntable virtuals sqlite:{b}\ntable users sqlite:{b}\n"
           'action "m" maildir virtual <virtuals> userbase <users>\n'
           'match from any for domain <domains> action "m"\n')
    texts = {
        "runs": "listen on 127.0.0.1 port 2525\n" + sql.format(b=root / "sqlite.conf"),
        "sqlite-config-missing": "listen on 127.0.0.1\n" + sql.format(b=root / "nosuch.conf"),
        "sqlite-database-missing": "listen on 127.0.0.1\n" + sql.format(b=root / "sqlite-nodb.conf"),
        "tls-without-pki": "listen on 127.0.0.1 tls\n" + sql.format(b=root / "sqlite.conf"),
        "table-file-unreadable": f"table aliases file:{root / 'a-directory'}\n"
                                 'action "m" maildir alias <aliases>\n'
                                 'match from any for local action "m"\n',
        "not-implemented": 'action "r" maildir\nmatch from rdns for any action "r"\n',
        "interface-lo": "listen on lo port 2525\n" + sql.format(b=root / "sqlite.conf"),
        "unknown-interface": "listen on nosuchif0\n" + sql.format(b=root / "sqlite.conf"),
        "foreign-address": "listen on 192.0.2.1\n" + sql.format(b=root / "sqlite.conf"),
    }
    paths = {}
    for name, text in texts.items():
        paths[name] = root / f"{name}.conf"
        paths[name].write_text(text)
    return paths


def check_accepts(path: Path) -> bool:
    return main(["check", "-f", str(path)]) == 0


def run_accepts(path: Path, spool: Path, monkeypatch: pytest.MonkeyPatch) -> bool:
    try:
        config = load(path)
    except (ConfigError, OSError):
        return False

    original = server_module.Listener.start

    async def start_on_port_zero(self: server_module.Listener) -> None:
        self.decl = dataclasses.replace(self.decl, port=0)
        await original(self)

    monkeypatch.setattr(server_module.Listener, "start", start_on_port_zero)

    async def attempt() -> bool:
        daemon = Daemon(config, spool, paused=frozenset({"mda"}))
        try:
            await daemon.start()
        except StartupError:
            return False
        await daemon.stop()
        return True
    try:
        return asyncio.run(attempt())
    finally:
        monkeypatch.undo()


def test_the_suite_has_configs_of_both_kinds():
    assert len(SUITE_CONFIGS) > 80


@pytest.mark.parametrize("path", SUITE_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_check_and_run_agree_on_every_suite_config(path, tmp_path, monkeypatch, capsys):
    assert check_accepts(path) == run_accepts(path, tmp_path / "spool", monkeypatch), \
        capsys.readouterr().err


def test_check_refuses_what_run_refuses(tmp_path, monkeypatch, capsys):
    cases = make_cases(tmp_path)
    verdicts = {name: (check_accepts(p), run_accepts(p, tmp_path / f"spool-{name}", monkeypatch))
                for name, p in cases.items()}
    err = capsys.readouterr().err
    assert verdicts == {
        "runs": (True, True),
        "sqlite-config-missing": (False, False),
        "sqlite-database-missing": (False, False),
        "tls-without-pki": (False, False),
        "table-file-unreadable": (False, False),
        "not-implemented": (False, False),
        "interface-lo": (True, True),
        "unknown-interface": (False, False),
        "foreign-address": (False, False),
    }, err
    assert "cannot listen on nosuchif0: nosuchif0 is neither an interface nor a host name" in err
    assert "cannot listen on 192.0.2.1: 192.0.2.1 is not an address of this machine" in err
    for name in ("sqlite-config-missing", "sqlite-database-missing", "tls-without-pki",
                 "table-file-unreadable", "not-implemented", "unknown-interface",
                 "foreign-address"):
        assert f"{cases[name]}:" in err       # file:line:column of the statement to change
