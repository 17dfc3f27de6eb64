"""The README's submission section, followed as written, then run.

Its shell blocks (and those of "A configuration" before it) run as written
in an empty directory: they write the certificate, postillion.conf,
sqlite.conf and the SQLite tables, credentials included.  That exact
configuration then runs as `postillion run` (a subprocess, uvloop when
installed), and the README's swaks commands send through 587 with STARTTLS
+ AUTH and through 465 with SMTPS.  Only what a test must change is changed:
the listeners move from 0.0.0.0 and ports 25/587/465 to free loopback ports
(and swaks follows them), and alice's userbase entry points at a Maildir in
the test directory, owned by a uid allowed to receive.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest

from postillion import demo
from postillion.config import load

from ..docs.readme import blocks, run_block, run_sections
from .conftest import Daemon, delivery_ids, free_port

SECTIONS = ("A configuration", "Submission")
USER, PASSWORD = "gilles", "s3cret pass"


def scratch() -> Path:
    """A directory traversable by the delivery uid (not pytest's 0700 tmp_path)."""
    root = Path(tempfile.mkdtemp(prefix="postillion-readme-", dir="/tmp"))
    os.chmod(root, 0o755)
    return root


@pytest.fixture(scope="module")
def followed():
    """A directory where the README's blocks ran once (bcrypt and a key pair are slow)."""
    root = scratch()
    try:
        run_sections(root, *SECTIONS)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def readme_dir(followed):
    """A copy of it for one test to change."""
    root = scratch()
    try:
        shutil.copytree(followed, root, dirs_exist_ok=True)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def columns(db_path: Path) -> dict[str, list[str]]:
    db = sqlite3.connect(db_path)
    try:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {n: [c[1] for c in db.execute(f"PRAGMA table_info({n})")] for n in names}
    finally:
        db.close()


def test_readme_submission_config_parses(readme_dir):
    config = load(readme_dir / "postillion.conf")
    ports = {listener.effective_port: listener for listener in config.listeners}
    assert ports[587].tls_require and ports[587].auth == "required" and ports[587].auth_table == "creds"
    assert ports[465].smtps and ports[25].tls
    # Its tables have the demo database's columns (src/postillion/demo.py).
    ours = columns(readme_dir / "tables.sqlite")
    demo.write_database(readme_dir / "demo.sqlite", readme_dir / "mail", *delivery_ids())
    for table, names in columns(readme_dir / "demo.sqlite").items():
        assert ours[table] == names, table
    assert set(ours) == {"domains", "virtuals", "users", "credentials", "senders"}


def to_loopback(config: str, ports: dict[int, int]) -> str:
    """The README's listeners on 127.0.0.1 and free ports; nothing else changes."""
    moved, count = re.subn(r"listen on 0\.0\.0\.0 port (\d+)",
                           lambda m: f"listen on 127.0.0.1 port {ports[int(m.group(1))]}", config)
    assert count == len(ports), config
    return moved


def test_swaks_through_the_readme_configuration(readme_dir):
    ports = {25: free_port(), 587: free_port(), 465: free_port()}
    config = readme_dir / "postillion.conf"
    config.write_text(to_loopback(config.read_text(), ports))
    mail = readme_dir / "mail"
    mail.mkdir(mode=0o755)
    (mail / "alice").mkdir(mode=0o700)
    uid, gid = delivery_ids()
    os.chown(mail / "alice", uid, gid)
    db = sqlite3.connect(readme_dir / "tables.sqlite")
    db.execute("UPDATE users SET uid = ?, gid = ?, home = ? WHERE name = 'alice'",
               (uid, gid, str(mail / "alice")))
    db.commit()
    db.close()
    daemon = Daemon(root=readme_dir, mail=mail, config=config, spool=readme_dir / "spool",
                    host="127.0.0.1", port=ports[25])
    try:
        daemon.start()
        for send in blocks("Submission", "send"):
            for port in (587, 465):
                send, count = re.subn(rf"--server mx\.example\.org --port {port}\b",
                                      f"--server 127.0.0.1 --port {ports[port]}", send)
                assert count == 1, send
            run_block(send, readme_dir)
        files = daemon.wait_delivered("alice", 2)
        texts = [f.read_bytes() for f in files]
        assert all(b"with ESMTPSA id" in t for t in texts)
        assert any(f"auth=yes user={USER}".encode() in t for t in texts)   # 587: received-auth
        log = daemon.log()
        assert log.count(f"smtp authentication user={USER} result=ok") == 2
        assert PASSWORD not in log
    finally:
        daemon.stop()
