"""Backend-config files: `dbpath`, `query_alias`, `conninfo`, `master`...

SQL, Redis and LDAP tables take the path of a small file of `key value`
lines (docs/tables.md: the text format, sqlite).  One parser serves them all:
each backend passes the keys it knows.  An unknown or duplicate key is an
error naming `file:line` [ours]: OpenSMTPD's add-on tables only warned, and a
typo such as `dbpth` then surfaced as mail refused at 3 a.m.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from typing import Mapping

from postillion.table.errors import BackendError
from postillion.table.textformat import logical_lines, split_map_line


@dataclass(frozen=True, slots=True)
class Setting:
    value: str
    line: int


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """A parsed backend-config file; helpers raise errors naming `file:line`."""

    path: str
    settings: Mapping[str, Setting]

    def get(self, key: str) -> str | None:
        setting = self.settings.get(key)
        return setting.value if setting else None

    def where(self, key: str) -> str:
        """`file:line` of a key, or `file` if it is absent: for error messages."""
        setting = self.settings.get(key)
        return f"{self.path}:{setting.line}" if setting else self.path

    def require(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise BackendError(f'{self.path}: missing "{key}"')
        return value

    def integer(self, key: str, default: int, minimum: int = 0) -> int:
        value = self.get(key)
        if value is None:
            return default
        if not (value.isascii() and value.isdigit()) or int(value) < minimum:
            raise BackendError(f'{self.where(key)}: "{key}" wants a number >= {minimum}')
        return int(value)

    def resolve_path(self, key: str) -> str:
        """A path setting, relative ones taken from the config file's directory."""
        value = self.require(key)
        value = os.path.expanduser(value)
        if os.path.isabs(value):
            return value
        return os.path.join(os.path.dirname(os.path.abspath(self.path)), value)


def parse_backend_config(text: str, path: str, known: Collection[str]) -> BackendConfig:
    """Parse backend-config text; every key must be in `known`, once."""
    settings: dict[str, Setting] = {}
    for number, line in logical_lines(text, path):
        if line.startswith("#"):
            continue
        key, value = split_map_line(line)
        if not key:
            raise BackendError(f"{path}:{number}: line starts with a separator, no key")
        if key not in known:
            raise BackendError(f'{path}:{number}: unknown key "{key}"')
        if key in settings:
            raise BackendError(
                f'{path}:{number}: duplicate key "{key}" (first on line {settings[key].line})')
        if not value:
            raise BackendError(f'{path}:{number}: key "{key}" has no value')
        settings[key] = Setting(value, number)
    return BackendConfig(path, settings)


def read_backend_config(path: str, known: Collection[str]) -> BackendConfig:
    """Read and parse a backend-config file.  Blocking: call it off the loop."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise BackendError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise BackendError(f"{path}: {e.strerror or e}") from None
    return parse_backend_config(text, path, known)
