"""Postillion installed the way a host installs it: a venv made with the
system's Python in a world-readable directory, the project installed into
it (not editable), so that any local user can run it.

The suite's own interpreter may live where only root can go (a pyenv in
/root, the .venv of a clone under a 0700 home).  Tests that run Postillion
as another user -- a developer's `make run`, a local `sendmail` -- use this
install, as docs/install.md tells an administrator to.  It is built once
per test run, under /tmp, and removed at the end.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Where a Debian-like host keeps its Python; the first that is 3.11+ wins.
CANDIDATES = ("/usr/bin/python3", "/usr/local/bin/python3", "/usr/bin/python3.13",
              "/usr/bin/python3.12", "/usr/bin/python3.11")


def system_python() -> str:
    """A Python 3.11+ that every user can execute (no 0700 directory on its path)."""
    for candidate in CANDIDATES:
        if not os.access(candidate, os.X_OK):
            continue
        real = Path(candidate).resolve()
        if not all(p.stat().st_mode & stat.S_IXOTH for p in real.parents):
            continue
        done = subprocess.run([candidate, "-c", "import sys; print(sys.version_info >= (3, 11))"],
                              capture_output=True, text=True, timeout=30)
        if done.stdout.strip() == "True":
            return candidate
    raise AssertionError(f"no system Python 3.11+ any user may run among {CANDIDATES}: "
                         "install Debian's python3 and python3-venv (make test-deps does)")


def build() -> Path:
    """A fresh world-readable venv with Postillion installed; returns its top."""
    top = Path(tempfile.mkdtemp(prefix="postillion-sysvenv-"))
    top.chmod(0o755)
    venv = top / "venv"
    subprocess.run([system_python(), "-m", "venv", str(venv)], check=True, timeout=120)
    done = subprocess.run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check",
                           str(REPO)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return venv


def remove(venv: Path) -> None:
    shutil.rmtree(venv.parent, ignore_errors=True)


if __name__ == "__main__":     # python -m tests.sysvenv: build one and print where
    print(build())
    sys.exit(0)
