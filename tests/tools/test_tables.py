"""The table tools, run as `postillion ...` subprocesses on real files."""

from __future__ import annotations

import os
import pty
import sqlite3
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest

from postillion.lookup.hashwork import ENCRYPT_BCRYPT_COST
from postillion.table.dbfile import parse_source, write_map

CONFIG = """\
table aliases db:aliases.db
table users file:users
table creds { alice = "alice:$2b$12$abcdefghijklmnopqrstuv" }
table nets { 192.0.2.0/24, "2001:db8::/32", local }
table domains { example.org, "*.example.net" }
table sql sqlite:sqlite.conf
listen on 127.0.0.1 port 2525
action "local" maildir alias <aliases> userbase <users>
match from src <nets> for domain <domains> action "local"
"""


def postillion(*args: str, stdin: str | None = None, cwd: Path | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "postillion.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "aliases").write_text("# aliases\nroot: alice, bob\nPostmaster: root\n")
    (tmp_path / "users").write_text("alice 1000:1000:/home/alice\nbob bob:1001:1001:/home/bob\n")
    db = sqlite3.connect(tmp_path / "tables.sqlite")
    db.execute("CREATE TABLE users (name TEXT, uid INT, gid INT, home TEXT)")
    db.execute("INSERT INTO users VALUES ('carol', 1002, 1002, '/home/carol')")
    db.commit()
    db.close()
    (tmp_path / "sqlite.conf").write_text(
        "dbpath tables.sqlite\nquery_userinfo SELECT uid, gid, home FROM users WHERE name = ?\n")
    (tmp_path / "smtpd.conf").write_text(CONFIG)
    # What `postillion makemap -t aliases aliases` runs (tested below as a command).
    text = (tmp_path / "aliases").read_text()
    write_map(parse_source(text, "aliases", "aliases"), str(tmp_path / "aliases.db"), "aliases",
              "aliases")
    return tmp_path


def lookup(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return postillion("table", "lookup", "-f", str(site / "smtpd.conf"), *args)


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("args, expected", [
    (("aliases", "alias", "ROOT"), "alice, bob"),
    (("aliases", "alias", "postmaster"), "root"),
    (("users", "userinfo", "Bob"), "bob:1001:1001:/home/bob"),
    (("users", "userinfo", "alice"), "alice:1000:1000:/home/alice"),
    (("sql", "userinfo", "carol"), "carol:1002:1002:/home/carol"),
    (("creds", "credentials", "alice"), "alice:$2b$12$abcdefghijklmnopqrstuv"),
    (("nets", "netaddr", "192.0.2.77"), "192.0.2.0/24"),
    (("nets", "netaddr", "local"), "local"),
    (("domains", "domain", "MX.example.net"), "*.example.net"),
    (("<getpwnam>", "userinfo", "root"), "root:0:0:"),
])
def test_lookup_found(site, args, expected):
    result = lookup(site, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(expected) and result.stdout.count("\n") == 1


@pytest.mark.parametrize("args", [
    ("aliases", "alias", "nobody"),
    ("users", "userinfo", "carol"),
    ("sql", "userinfo", "alice"),
    ("nets", "netaddr", "198.51.100.1"),
    ("domains", "domain", "example.net"),
])
def test_lookup_not_found(site, args):
    result = lookup(site, *args)
    assert_one_line_error(result, 1)
    assert result.stdout == "" and "not found" in result.stderr


@pytest.mark.parametrize("table, service, key", [
    ("sql", "userinfo", "carol' OR '1'='1"),
    ("sql", "userinfo", 'x"; DROP TABLE users; --'),
    ("sql", "userinfo", "%"),
    ("aliases", "alias", "root\nDATA"),
    ("aliases", "alias", "_"),
])
def test_lookup_injection_finds_nothing(site, table, service, key):
    # (every backend is tried with more such keys in-process: tests/table)
    assert lookup(site, table, service, key).returncode == 1
    assert lookup(site, "sql", "userinfo", "carol").returncode == 0


@pytest.mark.parametrize("args, error", [
    (("nope", "alias", "x"), "postillion: no such table: nope"),
    (("aliases", "alais", "x"), 'postillion: unknown service "alais"'),
    (("nets", "userinfo", "x"), "postillion: table nets (backend static) is a list and cannot"
                                " serve service userinfo"),
    (("sql", "alias", "x"), "cannot serve service alias"),
])
def test_lookup_errors(site, args, error):
    line = assert_one_line_error(lookup(site, *args), 2)
    assert line.startswith(error) or error in line


def test_lookup_malformed_value_is_error(site):
    (site / "users").write_text("alice 1000:1000:/home/alice\nbob 1001:/home/bob\n")
    line = assert_one_line_error(lookup(site, "users", "userinfo", "bob"), 2)
    assert 'key "bob"' in line and "malformed" in line and "/home/bob" not in line
    assert lookup(site, "users", "userinfo", "alice").returncode == 0


def test_lookup_bad_config_and_backend_down(site):
    (site / "bad.conf").write_text("table x { a }\nmatch from any to any action y\n")
    result = postillion("table", "lookup", "-f", str(site / "bad.conf"), "x", "domain", "a")
    assert result.returncode == 2 and f"{site / 'bad.conf'}:2:" in result.stderr
    assert "Traceback" not in result.stderr
    (site / "tables.sqlite").unlink()
    line = assert_one_line_error(lookup(site, "sql", "userinfo", "carol"), 2)
    assert "table sql" in line


def test_lookup_on_berkeley_db_says_rebuild(site):
    (site / "aliases.db").write_bytes(b"\x61\x15\x06\x00" + b"\x00" * 508)
    line = assert_one_line_error(lookup(site, "aliases", "alias", "root"), 2)
    assert "Berkeley DB" in line and f"postillion makemap {site / 'aliases'}" in line


def test_dump(site):
    conf = str(site / "smtpd.conf")
    result = postillion("table", "dump", "-f", conf, "aliases", "alias")
    assert result.returncode == 0 and result.stdout == "root alice, bob\npostmaster root\n"
    result = postillion("table", "dump", "-f", conf, "users", "userinfo")
    assert result.stdout == "alice alice:1000:1000:/home/alice\nbob bob:1001:1001:/home/bob\n"
    result = postillion("table", "dump", "-f", conf, "nets", "netaddr")
    assert result.stdout == "192.0.2.0/24\n2001:db8::/32\nlocal\n"
    line = assert_one_line_error(postillion("table", "dump", "-f", conf, "sql", "userinfo"), 2)
    assert "cannot list" in line


def test_makemap_builds_and_dumps(tmp_path):
    src = tmp_path / "virtual"
    src.write_text("Alice@Example.org alice\n@example.org catchall\n")
    result = postillion("makemap", str(src))
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    result = postillion("makemap", "-U", str(tmp_path / "virtual.db"))
    assert result.stdout == "alice@example.org alice\n@example.org catchall\n"


def test_makemap_set_stdin_and_output(tmp_path):
    out = tmp_path / "domains.db"
    result = postillion("makemap", "-t", "set", "-o", str(out), "-", stdin="example.org\n*.Example.NET\n")
    assert result.returncode == 0, result.stderr
    assert postillion("makemap", "-U", str(out)).stdout == "example.org\n*.Example.NET\n"


@pytest.mark.parametrize("text, kind, error", [
    ("root alice\n# c\nROOT bob\n", "map", 'src:3: duplicate key "root" (first on line 1)'),
    ("root alice\nbob\n", "map", 'src:2: key "bob" has no value'),
    ("root alice, |\n", "aliases", 'src:1: key "root": malformed alias value: target 2'),
    ("root error:250 fine\n", "aliases", "4xx or 5xx"),
    ("x.org\nX.ORG\n", "set", 'src:2: duplicate key "x.org" (first on line 1)'),
    ("root caf\xe9\n", "map", None),
])
def test_makemap_errors_keep_the_old_map(tmp_path, text, kind, error):
    src = tmp_path / "src"
    src.write_text("old value\n")
    assert postillion("makemap", "-t", "map", str(src)).returncode == 0
    src.write_text(text, encoding="utf-8")
    if error is None:                      # valid: é is UTF-8 text
        assert postillion("makemap", str(src)).returncode == 0
        return
    line = assert_one_line_error(postillion("makemap", "-t", kind, str(src)), 1)
    assert line == f"postillion: {tmp_path / error}" or error in line
    assert postillion("makemap", "-U", str(tmp_path / "src.db")).stdout == "old value\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "src.db"]


def test_makemap_refuses_odd_inputs(tmp_path):
    (tmp_path / "latin1").write_bytes(b"root alice\nbob caf\xe9\n")
    line = assert_one_line_error(postillion("makemap", str(tmp_path / "latin1")), 1)
    assert line == f"postillion: {tmp_path / 'latin1'}:2: not UTF-8 text"
    line = assert_one_line_error(postillion("makemap", str(tmp_path / "absent")), 1)
    assert "No such file" in line
    assert_one_line_error(postillion("makemap", "-", stdin="a b\n"), 1)
    (tmp_path / "m").write_text("a b\n")
    assert postillion("makemap", str(tmp_path / "m")).returncode == 0
    line = assert_one_line_error(postillion("makemap", str(tmp_path / "m.db")), 1)
    assert "is a database already" in line


def test_makemap_keeps_source_permissions(tmp_path):
    src = tmp_path / "creds"
    src.write_text("alice alice:secret\n")
    src.chmod(0o600)
    assert postillion("makemap", str(src)).returncode == 0
    assert os.stat(tmp_path / "creds.db").st_mode & 0o777 == 0o600


def test_makemap_progress_bar_on_a_terminal_only(tmp_path):
    src = tmp_path / "big"
    with src.open("w") as f:
        for i in range(60_000):
            f.write(f"user{i}@example.org user{i}\n")
    assert src.stat().st_size > 1 << 20
    result = postillion("makemap", str(src))                 # stderr is a pipe: no bar
    assert result.returncode == 0 and result.stderr == ""
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "postillion.cli", "makemap", "-o",
                               str(tmp_path / "big2.db"), str(src)],
                              stderr=terminal, stdout=subprocess.DEVNULL, timeout=60)
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
    assert proc.returncode == 0
    assert b"makemap: reading" in shown and b"100%" in shown and b"\r" in shown
    check = postillion("makemap", "-U", str(tmp_path / "big2.db"))
    assert check.stdout.count("\n") == 60_000


def test_newaliases_rebuilds_the_aliases_table(site):
    (site / "aliases").write_text("root: carol\n")
    result = postillion("newaliases", "-f", str(site / "smtpd.conf"))
    assert result.returncode == 0, result.stderr
    assert lookup(site, "aliases", "alias", "root").stdout == "carol\n"


def test_newaliases_checks_targets_and_keeps_old(site):
    (site / "aliases").write_text("root: carol\nbad: :include:relative\n")
    line = assert_one_line_error(postillion("newaliases", "-f", str(site / "smtpd.conf")), 1)
    assert line == (f'postillion: {site / "aliases"}:2: key "bad": malformed alias value: '
                    "target 1: :include: target wants an absolute path")
    assert lookup(site, "aliases", "alias", "root").stdout == "alice, bob\n"


def test_newaliases_with_a_text_aliases_table(tmp_path):
    (tmp_path / "aliases").write_text("root alice\n")
    (tmp_path / "smtpd.conf").write_text("table aliases file:aliases\n")
    result = postillion("newaliases", "-f", str(tmp_path / "smtpd.conf"))
    assert result.returncode == 0 and "nothing to build" in result.stderr
    assert not (tmp_path / "aliases.db").exists()


def test_encrypt_argument_and_stdin():
    result = postillion("encrypt", "hunter2")
    assert result.returncode == 0
    hashed = result.stdout.strip()
    assert hashed.startswith("$2b$") and bcrypt.checkpw(b"hunter2", hashed.encode())
    # The cost a listener assumes for a user it does not know, until it has
    # seen the table's own hashes: the two must agree.
    assert hashed.startswith(f"$2b${ENCRYPT_BCRYPT_COST}$")
    result = postillion("encrypt", stdin="pass word\n")
    assert bcrypt.checkpw(b"pass word", result.stdout.strip().encode())
    assert_one_line_error(postillion("encrypt", stdin=""), 1)
    line = assert_one_line_error(postillion("encrypt", "x" * 73), 1)
    assert "72 bytes" in line


def test_help_everywhere():
    for args in (["table", "--help"], ["table", "lookup", "--help"], ["table", "dump", "--help"],
                 ["makemap", "--help"], ["newaliases", "--help"], ["encrypt", "--help"]):
        result = postillion(*args)
        assert result.returncode == 0 and "usage:" in result.stdout, args
