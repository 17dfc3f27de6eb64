"""The embedded default: a demo virtual domain under ./var for `make run`.

Written only where absent, so an edited demo is never overwritten:
`var/postillion.conf`, `var/sqlite.conf` (the SQLite backend config) and
`var/tables.sqlite` holding the domain `example.test`, the users `alice` and
`bob` (virtual: no system account) and the alias `postmaster -> alice`.

Whose uid the demo users get: whoever runs it, so the delivered files are
theirs.  Deliveries never run as root (a project rule), so when root runs it
we take the invoking user of sudo (`SUDO_UID`), else the owner of the current
directory, else `nobody` -- and chown the mail directory to that uid.
"""

from __future__ import annotations

import os
import pwd
import sqlite3
from dataclasses import dataclass
from pathlib import Path

DOMAIN = "example.test"
USERS = ("alice", "bob")
HOSTNAME = "mail.example.test"
PORT = 2525


@dataclass(frozen=True, slots=True)
class DemoPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "postillion.conf"

    @property
    def backend_config(self) -> Path:
        return self.root / "sqlite.conf"

    @property
    def database(self) -> Path:
        return self.root / "tables.sqlite"

    @property
    def mail(self) -> Path:
        return self.root / "mail"

    @property
    def spool(self) -> Path:
        return self.root / "spool"


def delivery_owner() -> tuple[int, int]:
    """The uid/gid the demo users deliver as (never 0, see the module doc)."""
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    sudo_uid, sudo_gid = os.environ.get("SUDO_UID", ""), os.environ.get("SUDO_GID", "")
    if sudo_uid.isdigit() and sudo_gid.isdigit() and int(sudo_uid) != 0:
        return int(sudo_uid), int(sudo_gid)
    st = os.stat(".")
    if st.st_uid != 0 and st.st_gid != 0:
        return st.st_uid, st.st_gid
    try:
        nobody = pwd.getpwnam("nobody")
        return nobody.pw_uid, nobody.pw_gid
    except KeyError:
        return 65534, 65534


CONFIG = """\
# Postillion demo configuration, written by `postillion run` (make run).
# Every user, domain and alias lives in {db}, described by
# {backend}; edit either freely, they are not overwritten.
# Another port for one run: postillion run -D port=2526
port = "{port}"

table domains  sqlite:{backend}
table virtuals sqlite:{backend}
table users    sqlite:{backend}

listen on 127.0.0.1 port $port hostname {hostname}

action "local_mail" maildir virtual <virtuals> userbase <users>

match from any for domain <domains> action "local_mail"
match from local for local action "local_mail"
"""

BACKEND = """\
# SQLite backend of the demo tables (docs/tables.md, sqlite): one query per service.
dbpath            {db}
query_domain      SELECT name FROM domains WHERE name = ?
query_alias       SELECT target FROM virtuals WHERE address = ?
query_userinfo    SELECT uid, gid, home FROM users WHERE name = ?
query_credentials SELECT name, hash FROM credentials WHERE name = ?
"""


def write_database(path: Path, mail: Path, uid: int, gid: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    db = sqlite3.connect(tmp)
    try:
        db.executescript("""
            CREATE TABLE domains (name TEXT PRIMARY KEY);
            CREATE TABLE virtuals (address TEXT NOT NULL, target TEXT NOT NULL);
            CREATE INDEX virtuals_address ON virtuals(address);
            CREATE TABLE users (name TEXT PRIMARY KEY, uid INTEGER, gid INTEGER, home TEXT);
            CREATE TABLE credentials (name TEXT PRIMARY KEY, hash TEXT);
        """)
        db.execute("INSERT INTO domains VALUES (?)", (DOMAIN,))
        for user in USERS:
            db.execute("INSERT INTO virtuals VALUES (?, ?)", (f"{user}@{DOMAIN}", user))
            db.execute("INSERT INTO users VALUES (?, ?, ?, ?)",
                       (user, uid, gid, str(mail / DOMAIN / user)))
        db.execute("INSERT INTO virtuals VALUES (?, ?)", (f"postmaster@{DOMAIN}", "alice"))
        db.commit()
    finally:
        db.close()
    os.replace(tmp, path)


def ensure_demo(root: Path) -> DemoPaths:
    """Create the demo files that are missing; return where everything is."""
    paths = DemoPaths(root.resolve())
    paths.root.mkdir(parents=True, exist_ok=True)
    uid, gid = delivery_owner()
    if not paths.database.exists():
        write_database(paths.database, paths.mail, uid, gid)
    if not paths.backend_config.exists():
        paths.backend_config.write_text(BACKEND.format(db=paths.database))
    if not paths.config.exists():
        paths.config.write_text(CONFIG.format(db=paths.database, backend=paths.backend_config,
                                              port=PORT, hostname=HOSTNAME))
    for directory in (paths.mail, paths.mail / DOMAIN, *(paths.mail / DOMAIN / u for u in USERS)):
        directory.mkdir(mode=0o755 if directory.parent == paths.root else 0o700, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(directory, uid, gid)
    return paths
