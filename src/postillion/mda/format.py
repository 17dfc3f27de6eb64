"""Format specifiers (docs/configuration.md, Format specifiers): `%{rcpt.domain}` and friends.

Expanded in a maildir PATH, an `mda` command (each word on its own: the
command is split first, docs/configuration.md, Commands) and an `mda
wrapper`.  Names: `%{sender}`, `%{rcpt}`, `%{dest}` (each with `.user` /
`.domain`), `%{user.username}`, `%{user.directory}`, `%{mbox.from}` (the
sender, `MAILER-DAEMON` for the null sender), `%{mda}` (in a wrapper: the
command it wraps); the 2012 `%u` (the user name) and `%%` (a `%`); slices
`[a:b]`; modifiers `lowercase`, `uppercase`, `strip`, `raw`, several joined
by `:` or `|`; a leading `~/` for the user's home.

Unless `raw`, the characters ``!#$%&'*?`{|}~`` of a value become `:` -- and
so does `/` [ours]: a local part may legally hold `/`, and an envelope must
never pick a directory outside the one the administrator wrote.  The home
(`%{user.directory}`) is the administrator's own path and is kept as it is,
as OpenSMTPD keeps it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SPEC = re.compile(r"%\{([a-z.]+)(\[(-?\d*):?(-?\d*)\])?((?:[:|][a-z]+)*)\}|%%|%u")
_UNSAFE = set("!#$%&'*?`{|}~/")
#: Fields an envelope never chose: not escaped (the userbase's home).
_TRUSTED = frozenset({"user.directory"})
NULL_SENDER = "MAILER-DAEMON"


class FormatError(ValueError):
    """An unknown specifier or modifier: a config error, caught by `check`."""


@dataclass(frozen=True, slots=True)
class FormatEnv:
    sender: str
    rcpt: str
    dest: str
    username: str
    directory: str
    subaddress_delim: str = "+"
    mda: str = ""          # %{mda}: the command a wrapper runs


def _field(name: str, env: FormatEnv) -> str:
    base, _, part = name.partition(".")
    if base == "user":
        if part == "username":
            return env.username
        if part == "directory":
            return env.directory
        raise FormatError(f"unknown format specifier %{{{name}}}")
    if name == "mbox.from":
        return env.sender or NULL_SENDER
    if name == "mda":
        return env.mda
    if base in ("sender", "rcpt", "dest"):
        address = getattr(env, base)
        local, at, domain = address.rpartition("@")
        if not at:
            local, domain = address, ""
        if part == "":
            return address
        if part == "user":
            return local
        if part == "domain":
            return domain
    raise FormatError(f"unknown format specifier %{{{name}}}")


def escape(value: str) -> str:
    """A value as an unraw specifier gives it: unsafe characters become `:`."""
    value = "".join(":" if ch in _UNSAFE else ch for ch in value)
    return value.replace(".", ":") if value in (".", "..") else value


def expand(template: str, env: FormatEnv) -> str:
    """Expand every specifier; raise FormatError on an unknown one."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "%%":
            return "%"
        if m.group(0) == "%u":
            return escape(env.username)
        value = _field(m.group(1), env)
        if m.group(2):
            start = int(m.group(3)) if m.group(3) else None
            end = int(m.group(4)) if m.group(4) else None
            value = value[start:end]
        modifiers = [x for x in re.split(r"[:|]", m.group(5)) if x]
        raw = m.group(1) in _TRUSTED
        for mod in modifiers:
            if mod == "lowercase":
                value = value.lower()
            elif mod == "uppercase":
                value = value.upper()
            elif mod == "strip":
                value = value.split(env.subaddress_delim, 1)[0] if env.subaddress_delim else value
            elif mod == "raw":
                raw = True
            else:
                raise FormatError(f"unknown format modifier :{mod}")
        return value if raw else escape(value)

    # The home is put in after expansion: a `%` in it is no specifier.
    if template.startswith("~/"):
        return env.directory.rstrip("/") + _SPEC.sub(one, template[1:])
    if template == "~":
        return env.directory
    return _SPEC.sub(one, template)
