"""The README's configuration and table sections work when followed literally.

Each section's `<!-- test: run -->` shell blocks run as written, in order,
in an empty directory (see readme.py).  The submission section, which also
needs a running daemon and swaks, is run by tests/e2e/test_submission_config.py.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from postillion.config import load

from .readme import run_sections


def test_configuration_section_runs_as_written(tmp_path: Path):
    out = "".join(run_sections(tmp_path, "A configuration"))
    assert "alice\n" in out
    assert "alice:2000:2000:/var/vmail/alice" in out
    assert "maildir /var/vmail/alice/Maildir as alice(2000:2000)" in out   # postillion route
    config = load(tmp_path / "postillion.conf")
    assert [decl.effective_port for decl in config.listeners] == [25]
    # The schema is the demo database's (src/postillion/demo.py).
    db = sqlite3.connect(tmp_path / "tables.sqlite")
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        db.close()
    assert tables == {"domains", "virtuals", "users"}


def test_tables_section_runs_as_written(tmp_path: Path):
    out = "".join(run_sections(tmp_path, "Tables"))
    for name in ("aliases.db", "domains.db"):
        assert (tmp_path / name).is_file()
    lines = out.splitlines()
    assert "alice" in lines                       # table lookup aliases alias root
    assert "*.example.net" in lines               # the domain list matched a wildcard
    assert "abuse alice, bob@example.net" in lines  # table dump
    assert any(line.startswith("$2b$") for line in lines)  # encrypt


def test_dovecot_section_runs_as_written(tmp_path: Path):
    out = "".join(run_sections(tmp_path, "Virtual users in SQLite, mailboxes in Dovecot"))
    assert out.splitlines()[-1] == "alice"
    [action] = load(tmp_path / "postillion.conf").actions.values()
    assert (action.method, action.destination, action.rcpt_to) == ("lmtp", "/run/dovecot/lmtp", True)
    assert (action.virtual, action.userbase) == ("virtuals", "users")
