"""smtpd.conf -> an immutable, validated `Config` (see model.py).

`load()` reads a file (and its includes); `parse()` takes text already in
memory (tests, `postillion check -`).  Both raise one `ConfigError` listing
every problem as `file:line:column: message`; any other exception is a bug.
"""

from __future__ import annotations

import os
from typing import Mapping

from postillion.config.errors import ConfigError
from postillion.config.model import Config
from postillion.config.parser import Parser

__all__ = ["ConfigError", "load", "parse"]


def load(path: str | os.PathLike[str], defines: Mapping[str, str] | None = None) -> Config:
    """Read and parse the config at `path`; `defines` are `-D name=value` macros.

    Relative paths inside (tables, includes) resolve against the directory
    of the file that names them, never the working directory.
    """
    file = os.fspath(path)
    parser = Parser(defines)
    parser.parse_path(file, None)
    return parser.config(file)


def parse(text: str, path: str, defines: Mapping[str, str] | None = None) -> Config:
    """Parse `text` as if read from `path` (used for positions and relative paths)."""
    parser = Parser(defines)
    parser.parse_text(text, path)
    return parser.config(path)
