"""`postillion check -v` and `--convert`, and the warning for options not implemented yet."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from postillion.config import load, parse
from postillion.config.normal import normalise
from postillion.config.support import unsupported
from postillion.table.registry import BACKEND_NAMES, helper_dirs

EXAMPLES = Path(__file__).parent / "examples"
KNOWN = ", ".join(BACKEND_NAMES)


def postillion(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "postillion.cli", *args],
                          capture_output=True, text=True, timeout=60)


def test_verbose_prints_the_normalised_model(tmp_path: Path) -> None:
    conf = tmp_path / "smtpd.conf"
    conf.write_text('action "a" maildir\nmatch from src 10.0.0.0/8 for any action "a"\n')
    result = postillion("check", "-v", "-f", str(conf))
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)
    assert model["actions"] == {"a": normalise(load(conf))["actions"]["a"]}
    assert model["matches"][0]["criteria"][0] == {
        "kind": "from-src", "negate": False, "table": {"inline": {"list": ["10.0.0.0/8"]}},
        "regex": False}


def test_convert_prints_modern_grammar_that_parses_back() -> None:
    path = EXAMPLES / "B-2012-virtual.conf"
    result = postillion("check", "--convert", "-f", str(path))
    # Converted all the same; the status says run would refuse it (its pki's
    # certificate files are not on this machine).
    assert result.returncode == 1 and "pki mx.example.org: cannot load" in result.stderr
    assert "\naccept" not in result.stdout and "\nmatch from local for any action" in result.stdout
    again = parse(result.stdout, str(path.with_suffix(".converted")))
    assert normalise(again) == normalise(load(path))


def test_unimplemented_options_are_errors_as_run_refuses_them(tmp_path: Path) -> None:
    path = tmp_path / "smtpd.conf"
    path.write_text('action "m" mbox\nmatch from rdns for any action "m"\nqueue compression\n')
    result = postillion("check", "-f", str(path))
    assert result.returncode == 1
    expected = [f"{pos}: {message}" for pos, message in unsupported(load(path))]
    assert expected and result.stderr.splitlines() == expected


def test_convert_refuses_what_has_no_modern_spelling(tmp_path: Path) -> None:
    conf = tmp_path / "smtpd.conf"
    conf.write_text("accept for any relay via ssl://relay.example.org\n")
    result = postillion("check", "--convert", "-f", str(conf))
    assert result.returncode == 1
    assert f"{conf}:1:1: the 2012 relay scheme ssl://" in result.stderr


def test_check_refuses_a_backend_that_cannot_serve_the_use(tmp_path: Path) -> None:
    conf = tmp_path / "smtpd.conf"
    conf.write_text("table pw getpwnam:\ntable x foo:bar\n"
                    'action "a" maildir alias <pw> userbase <pw>\n'
                    'match for domain <pw> action "a"\n')
    result = postillion("check", "-f", str(conf))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f'{conf}:2:1: table x: unknown backend "foo" (known: {KNOWN}; no helper table-foo in '
        f'{", ".join(str(d) for d in helper_dirs())})',
        f"{conf}:3:26: table pw (backend getpwnam) cannot serve the alias service this "
        "statement needs",
        f"{conf}:4:18: table pw (backend getpwnam) cannot serve the domain service this "
        "statement needs",
    ]


def test_check_table_uses_name_each_service() -> None:
    config = load(EXAMPLES / "A-modern-sqlite.conf")
    assert sorted({(u.table, u.service) for u in config.table_uses}) == [
        ("sql", "alias"), ("sql", "credentials"), ("sql", "domain"), ("sql", "userinfo")]


def test_check_loads_file_tables_as_the_daemon_would(tmp_path: Path) -> None:
    (tmp_path / "aliases").write_text("root: gilles\n")
    (tmp_path / "list").write_text("a\nb\n")
    conf = tmp_path / "smtpd.conf"
    conf.write_text("table a file:aliases\ntable l file:list\ntable m file:missing\n"
                    'action "x" maildir alias <a> userbase <l>\nmatch for local action "x"\n')
    result = postillion("check", "-f", str(conf))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"{conf}:3:1: table m: ") and "No such file" in lines[0]
    assert lines[1].startswith(f"{conf}:4:39: table l ") and "userinfo" in lines[1]
    assert len(lines) == 2
