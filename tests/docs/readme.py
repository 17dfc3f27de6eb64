"""The README's shell blocks, taken as written, and a way to run them.

A block meant to be run is preceded by an HTML comment naming what it is
for, invisible once rendered:

    <!-- test: run -->     run as written, in the reader's directory
    <!-- test: send -->    sends mail to the daemon the section configures
                           (the test points it at its loopback ports)

The blocks of a section run one after the other in one directory, each with
`bash -e`, and `postillion` on PATH from this interpreter's environment (the
README assumes it there: an activated venv, or an installed package).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK_TIMEOUT = 60.0   # seconds one block may take (bcrypt, openssl, swaks)

_BLOCK = re.compile(r"<!-- test: (\w+) -->\n```sh\n(.*?)```", re.S)


def section(title: str) -> str:
    """The text of the `## ` section whose title starts with `title`."""
    text = README.read_text()
    parts = re.split(r"^## ", text, flags=re.M)
    found = [p for p in parts if p.startswith(title)]
    assert len(found) == 1, f"README: expected one section starting {title!r}, found {len(found)}"
    return found[0]


def blocks(title: str, kind: str) -> list[str]:
    """The `<!-- test: KIND -->` shell blocks of a section, in order; at least one."""
    found = [body for k, body in _BLOCK.findall(section(title)) if k == kind]
    assert found, f"README section {title!r} has no <!-- test: {kind} --> block"
    return found


#: Programs the blocks call besides postillion; the Makefile's TEST_DEBS installs them.
TOOLS = ("bash", "sqlite3", "openssl", "swaks")


def environment(body: str = "") -> dict[str, str]:
    """The environment a block runs in: `postillion` from this venv first on
    PATH, and every tool the block names present (else a loud failure)."""
    bindir = str(Path(sys.executable).parent)
    path = f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"
    found = shutil.which("postillion", path=path)
    assert found is not None and Path(found).parent == Path(bindir), (
        f"postillion is not installed beside {sys.executable}: run `make .venv/.installed`")
    for tool in TOOLS:
        if tool == "bash" or re.search(rf"^\s*(?:\S+=\$\()?{tool}\b", body, re.M):
            assert shutil.which(tool, path=path), f"{tool} is missing: run `make test-deps`"
    return {**os.environ, "PATH": path}


def run_block(body: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run one block with `bash -e` in `cwd`; fail with its output if it fails."""
    done = subprocess.run(["bash", "-e", "-c", body], cwd=cwd, env=environment(body),
                          capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
    assert done.returncode == 0, (f"README block failed (exit {done.returncode}):\n{body}\n"
                                  f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}")
    return done


def run_sections(cwd: Path, *titles: str) -> list[str]:
    """Run every `run` block of the sections, in order; their standard outputs."""
    return [run_block(body, cwd).stdout for title in titles for body in blocks(title, "run")]
