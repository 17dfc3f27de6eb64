"""The manual pages, postillion(8) and postillion.conf(5), are generated
from docs/ by tools/mkman and committed under man/: they must be what the
docs make now, render without a warning in both formatters a host may use
(groff, behind `man -l`, and mandoc's linter), and hold the sections a
reader looks for -- every verb of the command included."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from postillion.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
PAGES = (REPO / "man" / "man8" / "postillion.8", REPO / "man" / "man5" / "postillion.conf.5")


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is missing: install it (make test-deps installs {name})"
    return found


def verbs() -> list[str]:
    """Every verb `postillion --help` lists, `table lookup` style for sub-verbs."""
    def choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        return next((a.choices for a in parser._actions
                     if isinstance(a, argparse._SubParsersAction)), {})
    found = []
    for name, sub in choices(build_parser()).items():
        found += [f"{name} {inner}" for inner in choices(sub)] or [name]
    return found


def rendered(page: Path) -> str:
    done = subprocess.run([tool("man"), "-l", str(page)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "MANWIDTH": "80", "MANPAGER": "cat",
                                           "PAGER": "cat", "LC_ALL": "C.UTF-8"})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


def test_the_committed_pages_are_what_the_docs_make():
    done = subprocess.run([sys.executable, str(REPO / "tools" / "mkman"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-6000:]


def test_the_pages_render_without_a_warning():
    for page in PAGES:
        lint = subprocess.run([tool("mandoc"), "-T", "lint", "-W", "warning", str(page)],
                              capture_output=True, text=True, timeout=60)
        assert lint.returncode == 0 and lint.stdout + lint.stderr == "", lint.stdout + lint.stderr
        groff = subprocess.run([tool("groff"), "-t", "-man", "-Tutf8", "-ww", "-z", str(page)],
                               capture_output=True, text=True, timeout=60)
        assert groff.returncode == 0 and groff.stderr == "", groff.stderr


def headings(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines() if re.match(r"^ {0,3}\S", line)}


def test_postillion_8_has_its_sections_and_every_verb():
    text = rendered(PAGES[0])
    assert {"NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "FILES", "SEE ALSO"} <= headings(text)
    assert "postillion - a mail transfer agent" in text
    synopsis = text.split("SYNOPSIS", 1)[1].split("DESCRIPTION", 1)[0]
    for verb in verbs():
        assert f"postillion {verb} " in synopsis or f"postillion {verb}\n" in synopsis, verb
        assert verb in headings(text), f"no section for {verb}"
    assert "make targets" not in text          # a checkout's business, not the host's


def test_postillion_conf_5_has_its_sections():
    text = rendered(PAGES[1])
    assert {"NAME", "SYNOPSIS", "DESCRIPTION", "TABLE", "LISTEN ON", "ACTION", "MATCH",
            "GLOBAL OPTIONS", "SEE ALSO"} <= headings(text)
    assert "postillion.conf - Postillion configuration file" in text
    assert "/etc/postillion/postillion.conf" in text.split("DESCRIPTION", 1)[0]
    # Tables come out as tables (tbl ran): the global options' header row.
    assert re.search(r"statement\s+│\s*default", text)
