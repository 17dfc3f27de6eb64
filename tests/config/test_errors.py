"""ConfigError renders one `file:line:column: message` line per error."""

from __future__ import annotations

import pytest

from postillion.config import ConfigError, load, parse
from postillion.config.model import Position


def test_render() -> None:
    err = ConfigError([
        (Position("smtpd.conf", 12, 8), 'expected "for" after "match", got "to"'),
        (Position("smtpd.conf", 13, 1), "no such table: users"),
    ])
    assert str(err) == (
        'smtpd.conf:12:8: expected "for" after "match", got "to"\n'
        "smtpd.conf:13:1: no such table: users"
    )
    assert err.errors[1] == (Position("smtpd.conf", 13, 1), "no such table: users")


def test_missing_file(tmp_path) -> None:
    path = tmp_path / "nope.conf"
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == f"{path}:1:1: cannot read {path}: No such file or directory"


def test_bad_define() -> None:
    with pytest.raises(ConfigError) as info:
        parse("", "x.conf", defines={"a-b": "1"})
    assert str(info.value) == '<command line>:1:1: invalid macro name "a-b"'
