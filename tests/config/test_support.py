"""The runtime support check: parsed options the daemon does not implement yet.

`postillion check` accepts such a config (warning); the daemon refuses to
start on it, naming file:line:column and the option -- never a silent ignore.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from postillion.config import parse, support
from postillion.config import files as files_module
from postillion.config.model import Position


@pytest.fixture(autouse=True)
def fixed_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files_module, "default_hostname", lambda: "default.test")


def P(line: int, column: int) -> Position:
    return Position("smtpd.conf", line, column)


def test_implemented_config_has_nothing_to_report() -> None:
    config = parse(
        "table d { example.org }\ntable u { x = \"1:1:/x\" }\n"
        "listen on 127.0.0.1 port 2525 hostname mx.test\n"
        'action "a" maildir "~/Mail" userbase <u>\n'
        "match from any !for domain <d> reject\n"
        'match from src 10.0.0.0/8 for domain <d> action "a"\n'
        "smtp limit max-rcpt 10 max-sessions 5\n",
        "smtpd.conf")
    assert support.unsupported(config) == []
    assert support.refusal(config) is None


def test_each_unimplemented_option_is_named_where_written() -> None:
    config = parse(
        "pki mx cert /c\npki mx key /k\n"
        "listen on 127.0.0.1 tls pki mx\n"
        'action "r" relay pki mx ttl 1d\n'
        'match from rdns for any action "r"\n'
        "queue compression\n",
        "smtpd.conf")
    # `relay ... pki` (a client certificate) is implemented; the rest is not.
    assert support.unsupported(config) == [
        (P(5, 7), '"match from rdns" is not implemented by the runtime yet'),
        (P(6, 7), '"queue compression" is not implemented by the runtime yet'),
    ]
    # Extending the implemented set is one line: the report shrinks.
    more = support.IMPLEMENTED | {"match from rdns"}
    assert [m for _, m in support.unsupported(config, more)][0].startswith('"queue compression"')


def test_2012_from_local_needs_match_auth() -> None:
    config = parse("accept for local deliver to maildir\n", "smtpd.conf")
    assert [f.name for f in config.features if f.name == "match auth"]
    assert support.unsupported(config) == []  # match auth is implemented (rules.py)


def test_builtin_table_reference_is_a_feature() -> None:
    config = parse('action "a" maildir userbase <getpwnam>\n', "smtpd.conf")
    assert support.unsupported(config) == [
        (P(1, 29), '"table <getpwnam>" is not implemented by the runtime yet')]


def test_daemon_refuses_to_start(tmp_path: Path) -> None:
    from postillion.daemon import Daemon, StartupError

    config = parse("listen on 127.0.0.1 port 2525\nqueue compression\n", "smtpd.conf")
    with pytest.raises(StartupError) as info:
        asyncio.run(Daemon(config, tmp_path / "spool").start())
    assert 'smtpd.conf:2:7: "queue compression" is not implemented by the runtime yet' in str(info.value)


def test_a_wrapper_runs_for_mda_only() -> None:
    config = parse('mda wrapper w "/usr/bin/nice %{mda}"\n'
                   'action "a" maildir wrapper w\naction "b" mda "/bin/x" wrapper w\n'
                   'match from local for local action "b"\n', "smtpd.conf")
    assert support.unsupported(config) == [
        (P(2, 20), '"action maildir wrapper" is not implemented by the runtime yet')]
