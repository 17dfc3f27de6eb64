"""Real system accounts for tests: for AUTH, made by `useradd`, given a
password by `chpasswd` (through PAM, as `passwd` would); for delivery to
~/Maildir, one with a home directory; each removed by `userdel`.

Tests run as root.  Other test runs on the machine may hold the shadow lock
for a moment, so each command is retried a bounded number of times.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from postillion.lookup.auth import shadow_hash

_TRIES = 50


def run(*argv: str, stdin: str | None = None) -> None:
    """An account command, retried while another run holds the lock."""
    for _ in range(_TRIES):
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
        if done.returncode == 0:
            return
        time.sleep(0.1)  # e.g. "cannot lock /etc/shadow; try again later"
    raise AssertionError(f"{argv[0]} failed {_TRIES} times: {done.stderr.strip()}")


def set_password(user: str, password: str, *options: str) -> str:
    """`chpasswd [options]` for `user`; returns the hash it wrote."""
    run("chpasswd", *options, stdin=f"{user}:{password}\n")
    stored = shadow_hash(user)
    assert stored is not None, f"chpasswd left {user} without a password"
    return stored


@contextlib.contextmanager
def system_user(password: str) -> Iterator[str]:
    """A uniquely named account (no home, no shell) with `password`."""
    user = "ptest" + secrets.token_hex(6)
    run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", user)
    try:
        set_password(user, password)
        yield user
    finally:
        run("userdel", user)


@contextlib.contextmanager
def shell_user(prefix: str = "ptest") -> Iterator[pwd.struct_passwd]:
    """A uniquely named account without a home that commands can run as
    (`su USER -c ...`: a shell, /bin/sh)."""
    user = prefix + secrets.token_hex(5)
    run("useradd", "--no-create-home", "--shell", "/bin/sh", user)
    try:
        yield pwd.getpwnam(user)
    finally:
        run("userdel", user)


@contextlib.contextmanager
def user_with_home() -> Iterator[pwd.struct_passwd]:
    """A uniquely named account with a home directory (useradd
    --create-home) and no login shell; removed with its home."""
    user = "ptest" + secrets.token_hex(6)
    run("useradd", "--create-home", "--shell", "/usr/sbin/nologin", user)
    try:
        yield pwd.getpwnam(user)
    finally:
        run("userdel", "--remove", user)


@contextlib.contextmanager
def home_user(parent: Path) -> Iterator[tuple[str, int, int, Path]]:
    """A uniquely named account (no password, no shell) whose home is a new
    0700 directory under `parent`: (name, uid, gid, home).  For deliveries
    as a real system user (`getpwnam`), `.forward` files and ownership."""
    user = "ptest" + secrets.token_hex(6)
    home = parent / user
    run("useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/usr/sbin/nologin",
        user)
    try:
        entry = pwd.getpwnam(user)
        home.mkdir(mode=0o700)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        yield user, entry.pw_uid, entry.pw_gid, home
    finally:
        run("userdel", user)
