"""A real system account for AUTH tests: made by `useradd`, given a password
by `chpasswd` (through PAM, as `passwd` would), removed by `userdel`.

Tests run as root.  Other test runs on the machine may hold the shadow lock
for a moment, so each command is retried a bounded number of times.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import time
from collections.abc import Iterator

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
