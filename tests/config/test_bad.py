"""Bad configs, chasquid style: tests/config/bad/NN-name/{smtpd.conf,expected}.

Each case is loaded from its own directory (so positions read
`smtpd.conf:L:C`) and must fail with exactly the lines in `expected`: every
error of the file, in reading order, each at its file, line and column.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from postillion.config import ConfigError, load

BAD = Path(__file__).parent / "bad"
CASES = sorted(p for p in BAD.iterdir() if (p / "smtpd.conf").exists())


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_bad_config(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(case)
    with pytest.raises(ConfigError) as info:
        load("smtpd.conf")
    expected = (case / "expected").read_text().rstrip("\n")
    assert str(info.value) == expected
    assert len(info.value.errors) == len(expected.splitlines())
