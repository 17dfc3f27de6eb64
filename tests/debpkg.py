"""Files shipped in a Debian package, read without installing it.

`apt-get download PACKAGE` fetches the .deb into a cache directory
(`$XDG_CACHE_HOME/postillion-tests`, else `~/.cache/postillion-tests`,
as bench/run caches its packages), `dpkg-deb -x` unpacks it beside it once,
and a test reads the file from the unpacked tree: nothing is installed, no
service starts, no file outside the cache is written.  Later runs reuse the
cache; `apt-get update` runs only when apt has no package lists yet.

Fetching needs the machine's apt sources; a failure fails the test (it is
never a skip).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "postillion-tests"
#: Seconds apt-get and dpkg-deb may take.
TIMEOUT = 600


def _fetch(package: str) -> Path:
    """The cached .deb of `package` (the newest cached one), fetched if none is."""
    debs = sorted(CACHE.glob(f"{package}_*.deb"))
    if debs:
        return debs[-1]
    CACHE.mkdir(parents=True, exist_ok=True)
    # Into a directory of our own first: another run may be fetching too.
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        os.chmod(scratch, 0o755)        # apt's _apt user writes there when it can
        fetch = ["apt-get", "download", "-q", package]
        done = subprocess.run(fetch, cwd=scratch, capture_output=True, text=True, timeout=TIMEOUT)
        if done.returncode:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=TIMEOUT)
            done = subprocess.run(fetch, cwd=scratch, capture_output=True, text=True,
                                  timeout=TIMEOUT)
        fetched = sorted(Path(scratch).glob(f"{package}_*.deb"))
        assert done.returncode == 0 and fetched, \
            f"`apt-get download {package}` failed: {done.stderr.strip()}"
        os.replace(fetched[-1], CACHE / fetched[-1].name)
    return CACHE / fetched[-1].name


def unpacked(package: str) -> Path:
    """The root of `package`'s files, unpacked (not installed) under CACHE."""
    deb = _fetch(package)
    tree = CACHE / deb.stem
    if not (tree / ".unpacked").exists():
        scratch = Path(tempfile.mkdtemp(dir=CACHE))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(scratch)], check=True, timeout=TIMEOUT)
        (scratch / ".unpacked").touch()
        shutil.rmtree(tree, ignore_errors=True)
        try:
            os.replace(scratch, tree)
        except OSError:                 # another run unpacked it first
            shutil.rmtree(scratch, ignore_errors=True)
    return tree


def shipped_file(package: str, path: str) -> Path:
    """A file as `package` ships it (`path` relative to /, e.g. etc/smtpd.conf)."""
    found = unpacked(package) / path
    assert found.is_file(), f"{package} ships no /{path}"
    return found
