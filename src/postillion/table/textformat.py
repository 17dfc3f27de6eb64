"""The text format of file tables, makemap input and backend-config files.

docs/tables.md (The text format): one reader for all three so an administrator learns it once:

* blanks trimmed, blank lines skipped; a line whose first non-blank is `#` is
  a comment (`#` elsewhere is data);
* a trailing `\\` joins the next line (an escaped `\\\\` does not);
* a map line is `key value`, `key: value` or `key:value`: the key runs to the
  first space, tab or `:`, then blanks and `: ` are skipped
  (`vmail:2000:2000:/var/vmail` is key `vmail`, value `2000:2000:/var/vmail`);
* the first data line decides map (it has a space, tab or `:`) or list;
  `# @list` before it forces a list, for IPv6 addresses.

Errors name `file:line` and what is wrong, and are raised as `BackendError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Mapping

from postillion.table.backend import EntryCheck, Shape
from postillion.table.errors import BackendError, printable
from postillion.table.values import BadValue

SEPARATORS = " \t:"


def logical_lines(text: str, origin: str) -> Iterator[tuple[int, str]]:
    """(line number, trimmed text) of each non-blank line, comments included.

    A line ending in an odd number of backslashes continues on the next one:
    the backslash is dropped and the next line appended as it is, so its
    indentation separates the words.  A comment never continues.
    """
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip() if not pending else raw.rstrip()
        if not pending:
            if not line:
                continue
            start = number
            if line.startswith("#"):
                yield number, line
                continue
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2:
            pending.append(line[:-1])
            continue
        pending.append(line)
        joined = "".join(pending).strip()
        pending = []
        if joined:
            yield start, joined
    if pending:
        raise BackendError(f"{origin}:{start}: line continued with \\ at end of file")


_MAP_LINE: Final = re.compile(r"([^ \t:]*)(?:[ \t:](?:[ \t]|:(?=[ \t]))*(.*))?", re.DOTALL)


def split_map_line(line: str) -> tuple[str, str]:
    """Split a trimmed data line into key and value ("" if there is none).

    The key runs to the first space, tab or `:`; that one separator, then
    any blanks and `:` followed by a blank, are skipped; the rest is the value.
    """
    match = _MAP_LINE.match(line)
    assert match is not None        # the pattern matches any string
    return match.group(1), match.group(2) or ""


def is_list_directive(comment: str) -> bool:
    return comment[1:].strip() == "@list"


@dataclass(frozen=True, slots=True)
class Contents:
    """What a static or file table holds, swapped as one object on reload.

    `decided` is False for an empty file (no data line, no `# @list`): it is
    a map by default but fits a table that was a list before.
    """

    shape: Shape
    elements: tuple[str, ...] = ()
    mapping: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    decided: bool = True

    @classmethod
    def of_list(cls, items: tuple[str, ...] | list[str]) -> Contents:
        return cls(Shape.LIST, tuple(items))

    @classmethod
    def of_map(cls, pairs: Mapping[str, str], decided: bool = True) -> Contents:
        return cls(Shape.MAP, mapping=MappingProxyType(dict(pairs)), decided=decided)


def entry_problem(key: str | None, index: int, raw: str, bad: BadValue) -> str:
    """What is wrong with one entry, for an error message.

    A map entry is named by its key, never its value (it may be a secret); a
    list element by its position and text (an address or a domain).
    """
    if key is None:
        return f"list element {index} {printable(raw)} is {bad}"
    return f"key {printable(key)}: {bad}"


def check_contents(contents: Contents, check: EntryCheck) -> None:
    """Run `check` over every entry; BackendError for the first bad one."""
    if contents.shape is Shape.LIST:
        for index, element in enumerate(contents.elements, 1):
            try:
                check(None, element)
            except BadValue as bad:
                raise BackendError(entry_problem(None, index, element, bad)) from None
        return
    for index, (key, raw) in enumerate(contents.mapping.items(), 1):
        try:
            check(key, raw)
        except BadValue as bad:
            raise BackendError(entry_problem(key, index, raw, bad)) from None


def map_entry(line: str, origin: str, number: int) -> tuple[str, str]:
    """One map line of the text format -> (lowercased key, value as written).

    Shared by file tables and makemap, so both refuse the same lines with
    the same words: BackendError naming `origin:line`.
    """
    key, value = split_map_line(line)
    if not key:
        raise BackendError(f"{origin}:{number}: line starts with a separator, no key")
    if not value:
        raise BackendError(f'{origin}:{number}: key "{key}" has no value')
    return key.lower(), value


def note_key(first_seen: dict[str, int], key: str, origin: str, number: int) -> None:
    """Record where `key` was first seen; a second time is an error naming both lines."""
    seen = first_seen.setdefault(key, number)
    if seen != number:
        raise BackendError(f'{origin}:{number}: duplicate key "{key}" (first on line {seen})')


def parse_table_text(text: str, origin: str, check: EntryCheck | None = None) -> Contents:
    """Parse a file table (docs/tables.md); keys lowercased, values as written.

    Raises BackendError naming `origin:line` for a key without a value, an
    empty key, two keys equal after lowercasing, or an entry that `check`
    (the services the table is used for, see `Table.verify`) rejects.
    """
    shape: Shape | None = None
    force_list = False
    elements: list[str] = []
    mapping: dict[str, str] = {}
    first_seen: dict[str, int] = {}
    for number, line in logical_lines(text, origin):
        if line.startswith("#"):
            if shape is None and is_list_directive(line):
                force_list = True
            continue
        if shape is None:
            has_separator = any(c in line for c in SEPARATORS)
            shape = Shape.LIST if force_list or not has_separator else Shape.MAP
        if shape is Shape.LIST:
            elements.append(line)
            if check is not None:
                try:
                    check(None, line)
                except BadValue as bad:
                    raise BackendError(f"{origin}:{number}: "
                                       f"{entry_problem(None, len(elements), line, bad)}") from None
            continue
        folded, value = map_entry(line, origin, number)
        note_key(first_seen, folded, origin, number)
        mapping[folded] = value
        if check is not None:
            try:
                check(folded, value)
            except BadValue as bad:
                raise BackendError(f"{origin}:{number}: "
                                   f"{entry_problem(folded, 0, value, bad)}") from None
    if shape is Shape.LIST or force_list:
        return Contents.of_list(elements)
    return Contents.of_map(mapping, decided=shape is not None)
