"""Values written in smtpd.conf: numbers, sizes, ports, table locations.

Kept apart from the grammar so each rule (`K/M/G` are powers of
1024, ports 1..65535, a relative backend path resolves against the declaring
file) is stated once and tested alone.  Each function returns the value or
raises `Syntax` at the token.
"""

from __future__ import annotations

import os
import re
import shlex

from postillion.config.lexer import Token
from postillion.config.stream import Syntax
from postillion.shellsyntax import shell_syntax

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


_DURATION = re.compile(r"([0-9]{1,9})([smhd])\Z")
_DURATION_SCALE = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(tok: Token, what: str) -> float:
    """Seconds from `N[smhd]` (`4d` = 345 600); at least 1s.

    The unit is required, as in OpenSMTPD: a bare `4` could mean anything.
    """
    match = _DURATION.match(tok.text)
    if not match:
        raise Syntax(tok.pos, f"expected a delay such as 4d, 30m or 90s for {what}, "
                              f"got {tok.describe()}")
    value = int(match.group(1)) * _DURATION_SCALE[match.group(2)]
    if value < 1:
        raise Syntax(tok.pos, f"{what} must be at least 1s, got {tok.text}")
    return float(value)


def duration_text(seconds: float) -> str:
    """The shortest exact `N[smhd]` for a whole number of seconds (for --convert)."""
    value = int(seconds)
    for unit, scale in (("d", 86400), ("h", 3600), ("m", 60)):
        if value % scale == 0:
            return f"{value // scale}{unit}"
    return f"{value}s"


# Format specifiers (docs/configuration.md): %{name[slice][:modifier|modifier]}.
FORMAT_NAMES = frozenset({
    "sender", "sender.user", "sender.domain", "rcpt", "rcpt.user", "rcpt.domain",
    "dest", "dest.user", "dest.domain", "user.username", "user.directory", "mbox.from", "mda",
})
FORMAT_MODIFIERS = frozenset({"lowercase", "uppercase", "strip", "raw"})
_FORMAT = re.compile(r"%\{([^}]*)\}|%(.?)", re.S)
_FORMAT_BODY = re.compile(r"([a-z.]+)(\[-?[0-9]{0,4}(?::-?[0-9]{0,4})?\])?(?::([a-z|]+))?\Z")


def format_string(tok: Token, what: str) -> str:
    """Check every `%{...}` of a maildir path, mda command or lmtp target.

    Unknown names or modifiers are errors now, not at delivery time;
    `%u` (2012) and `%%` are allowed.
    """
    for found in _FORMAT.finditer(tok.text):
        body, single = found.group(1), found.group(2)
        if body is None:
            if single in ("u", "%"):
                continue
            raise Syntax(tok.pos, f"unknown format specifier %{single} in {what} {tok.describe()}"
                                  " (expected %{name})")
        parts = _FORMAT_BODY.match(body)
        if not parts or parts.group(1) not in FORMAT_NAMES:
            name = parts.group(1) if parts else body
            raise Syntax(tok.pos, f"unknown format specifier %{{{name}}} in {what}; expected one"
                                  f" of {', '.join(sorted(FORMAT_NAMES))}")
        for modifier in (parts.group(3) or "").split("|") if parts.group(3) else ():
            if modifier not in FORMAT_MODIFIERS:
                raise Syntax(tok.pos, f"unknown format modifier {modifier!r} in %{{{body}}};"
                                      " expected lowercase, uppercase, strip or raw")
    return tok.text


def command(tok: Token, what: str) -> str:
    """An `mda` command: split into argv before expansion, run without a shell.

    Unquoted `| ; & < >`, a backquote or `$(` are refused: the command never
    reaches a shell, so they could only mean the administrator expects one
    (and envelope data in a shell was CVE-2020-7247).
    """
    text = tok.text
    shown = shell_syntax(text)
    if shown is not None:
        raise Syntax(tok.pos, f"{what} {tok.describe()} uses the shell syntax {shown!r}; "
                              "commands run without a shell (quote it, or use a script)")
    try:
        argv = shlex.split(text)
    except ValueError as e:
        raise Syntax(tok.pos, f"cannot split {what} {tok.describe()}: {e}") from None
    if not argv:
        raise Syntax(tok.pos, f"expected a command for {what}, got {tok.describe()}")
    format_string(tok, what)
    return text
