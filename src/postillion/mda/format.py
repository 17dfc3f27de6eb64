"""Format specifiers of action paths (docs/configuration.md): `%{rcpt.domain}` and friends.

Only what the maildir agent needs yet: `%{sender}`, `%{rcpt}`, `%{dest}`
(each with `.user` / `.domain`), `%{user.username}`, `%{user.directory}`,
slices `[a:b]`, the modifiers `lowercase`, `uppercase`, `strip`, `raw`, and a
leading `~/` for the user's home.  Unless `raw`, the characters
``!#$%&'*?`{|}~`` become `:` -- and so does `/` [ours]: a local part may
legally hold `/`, and an envelope must never pick a directory outside the one
the administrator wrote.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SPEC = re.compile(r"%\{([a-z.]+)(\[(-?\d*):?(-?\d*)\])?((?::[a-z]+)*)\}")
_UNSAFE = set("!#$%&'*?`{|}~/")


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


def _field(name: str, env: FormatEnv) -> str:
    base, _, part = name.partition(".")
    if base == "user":
        if part == "username":
            return env.username
        if part == "directory":
            return env.directory
        raise FormatError(f"unknown format specifier %{{{name}}}")
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


def expand(template: str, env: FormatEnv) -> str:
    """Expand every specifier; raise FormatError on an unknown one."""

    def one(m: re.Match[str]) -> str:
        value = _field(m.group(1), env)
        if m.group(2):
            start = int(m.group(3)) if m.group(3) else None
            end = int(m.group(4)) if m.group(4) else None
            value = value[start:end]
        modifiers = [x for x in m.group(5).split(":") if x]
        raw = False
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
        if not raw:
            value = "".join(":" if ch in _UNSAFE else ch for ch in value)
            if value in (".", ".."):
                value = value.replace(".", ":")
        return value

    if template.startswith("~/"):
        template = env.directory.rstrip("/") + template[1:]
    elif template == "~":
        template = env.directory
    return _SPEC.sub(one, template)
