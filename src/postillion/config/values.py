"""Values written in smtpd.conf: numbers, sizes, ports, table locations.

Kept apart from the grammar so each rule (SPEC.md: `K/M/G` are powers of
1024, ports 1..65535, a relative backend path resolves against the declaring
file) is stated once and tested alone.  Each function returns the value or
raises `Syntax` at the token.
"""

from __future__ import annotations

import os
import re

from postillion.config.lexer import Token
from postillion.config.stream import Syntax

_NUMBER = re.compile(r"[0-9]{1,18}\Z")   # ASCII digits only; bounded for int()
_SIZE = re.compile(r"([0-9]{1,18})([kKmMgG]?)\Z")
_SCALE = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_BACKEND = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*\Z")

# Backends whose config string is a file (the table itself or its
# backend-config): a relative one is made absolute against the declaring
# file, so the daemon's working directory never matters.  Others (proc,
# socketmap, getpwnam) keep their config as written.
PATH_BACKENDS = frozenset({"file", "db", "sqlite", "postgres", "mysql", "redis", "ldap"})


def number(tok: Token, what: str, low: int = 1, high: int = 2**31 - 1) -> int:
    """A decimal integer in [low, high]: `port 2525`, `max-rcpt 100`."""
    if not _NUMBER.match(tok.text):
        raise Syntax(tok.pos, f"expected a number for {what}, got {tok.describe()}")
    value = int(tok.text)
    if not low <= value <= high:
        raise Syntax(tok.pos, f"{what} must be {low}..{high}, got {tok.text}")
    return value


def size(tok: Token, what: str) -> int:
    """Octets: `35M` = 36 700 160 (K/M/G are powers of 1024); at least 1."""
    match = _SIZE.match(tok.text)
    if not match:
        raise Syntax(tok.pos, f"expected a size such as 35M for {what}, got {tok.describe()}")
    value = int(match.group(1)) * _SCALE[match.group(2).lower()]
    if value < 1:
        raise Syntax(tok.pos, f"{what} must be at least 1, got {tok.text}")
    return value


def resolve(path: str, declaring_file: str) -> str:
    """`path` made absolute against the directory of the file declaring it."""
    if os.path.isabs(path):
        return os.path.normpath(path)
    base = os.path.dirname(os.path.abspath(declaring_file))
    return os.path.normpath(os.path.join(base, path))


def table_location(tok: Token, config: str | None = None) -> tuple[str, str | None]:
    """`BACKEND:CONFIG` or `/abs/path` -> (backend, config).

    `config` is given when the lexer split `proc:"cmd --opt"` into a word
    ending in `:` and a quoted string.  Paths of PATH_BACKENDS are resolved
    against the declaring file; an empty config is None (`getpwnam:`).
    """
    text = tok.text
    if config is None and text.startswith("/"):
        return "file", os.path.normpath(text)
    backend, sep, rest = text.partition(":")
    if not sep or not _BACKEND.match(backend):
        raise Syntax(
            tok.pos,
            f"expected BACKEND:CONFIG (sqlite:/etc/mail/sql.conf) or an absolute path, "
            f"got {tok.describe()}",
        )
    if config is not None:
        rest = config
    if backend in PATH_BACKENDS:
        if not rest:
            raise Syntax(tok.pos, f'expected a path after "{backend}:"')
        return backend, resolve(rest, tok.pos.file)
    return backend, rest or None
