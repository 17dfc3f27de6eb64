"""A small tmpfs for the full-disk tests: writes beyond it fail with ENOSPC."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def small_tmpfs(mount: Path, size: str = "64k") -> Iterator[Path]:
    """`mount` (made here) as a tmpfs of `size`, unmounted at the end."""
    assert os.geteuid() == 0, "mounting a tmpfs needs root (make test runs as root)"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"cannot mount a tmpfs for the full-disk test: {done.stderr}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
