"""The compiled map of `db:` tables: an SQLite file built by `postillion makemap`.

docs/tables.md, db: Python has no Berkeley DB, so a "db" is an SQLite file
holding one table `map(key, value)`, keys lowercased and unique, rows in the
order of the source file, and a `meta(name, value)` table saying what was
built (`type` = map, set or aliases; `source`).  A `set` (`makemap -t set`)
is a list: `key` is the element lowercased (for the unique check) and
`value` the element as written (a regex keeps its case).

Building is atomic: the map is written to a temporary file beside the
output, fsynced, renamed over it and the directory fsynced, so a daemon that
reopens it on change never sees half a map, and a crash leaves the old one.
The new file takes the permissions of its source: a credentials map built
from a 0600 file stays 0600.

`sniff` tells an SQLite file from an OpenSMTPD Berkeley DB one, so that
opening `/etc/mail/aliases.db` left by OpenSMTPD says to rebuild it.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from postillion.fsutil import fsync_dir
from postillion.table.errors import BackendError
from postillion.table.services import Service
from postillion.table.textformat import entry_problem, logical_lines, map_entry, note_key
from postillion.table.values import BadValue, MalformedValue, parse_value

TYPES: Final = ("map", "set", "aliases")
FORMAT: Final = "postillion-makemap 1"
SQLITE_MAGIC: Final = b"SQLite format 3\x00"
# Berkeley DB magic numbers (hash, btree, queue, heap), at offset 0 in the
# 1.85 format OpenBSD's makemap writes, at offset 12 in DB 2.x and later.
BERKELEY_MAGICS: Final = frozenset({0x061561, 0x053162, 0x042253, 0x074582})
MMAP_SIZE: Final = 1 << 30      # bytes of a map read through mmap (address space, not RSS)


def sniff(path: str) -> str:
    """"sqlite", "berkeley", "empty" or "other", from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "empty"
    if head.startswith(SQLITE_MAGIC):
        return "sqlite"
    for offset in (0, 12):
        chunk = head[offset:offset + 4]
        if len(chunk) == 4 and ({struct.unpack("<I", chunk)[0], struct.unpack(">I", chunk)[0]}
                                & BERKELEY_MAGICS):
            return "berkeley"
    return "other"


def source_of(db_path: str) -> str:
    """The text file a map is built from: the path minus `.db`."""
    return db_path[:-3] if db_path.endswith(".db") else db_path


def berkeley_advice(path: str) -> str:
    return (f"{path} is a Berkeley DB file (OpenSMTPD's makemap); Postillion reads maps"
            f" built by its own makemap: rebuild it with `postillion makemap"
            f" {source_of(path)}` (or `postillion newaliases` for aliases)")


@dataclass(frozen=True, slots=True)
class Entry:
    key: str        # lowercased
    value: str      # as written
    line: int


def parse_source(text: str, origin: str, kind: str,
                 progress: Callable[[int], None] | None = None) -> list[Entry]:
    """Read makemap input (the text format of docs/tables.md) into entries, checked.

    map and aliases: `key value` lines, a key without value is an error;
    aliases also checks each target.  set: one element per line.
    Two keys equal after lowercasing are an error naming both lines.
    `progress(line)` is called now and then with the current line number.
    """
    entries: list[Entry] = []
    first: dict[str, int] = {}
    tick = 0
    for number, line in logical_lines(text, origin):
        tick += 1
        if progress is not None and tick >= 4096:
            tick = 0
            progress(number)
        if line.startswith("#"):
            continue
        if kind == "set":
            key, value = line.lower(), line
        else:
            key, value = map_entry(line, origin, number)
            if kind == "aliases":
                try:
                    parse_value(Service.ALIAS, key, value)
                except MalformedValue as e:
                    bad = BadValue(f"malformed alias value: {e.reason}")
                    raise BackendError(f"{origin}:{number}: {entry_problem(key, 0, value, bad)}"
                                       ) from None
        note_key(first, key, origin, number)
        entries.append(Entry(key, value, number))
    return entries


def write_map(entries: Iterable[Entry], out: str, kind: str, source: str,
              mode: int = 0o644) -> int:
    """Write entries to `out` atomically; returns how many were written."""
    directory = os.path.dirname(os.path.abspath(out))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(out)}.", suffix=".tmp")
    os.close(fd)
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = OFF")
            conn.execute("PRAGMA synchronous = OFF")
            conn.execute("BEGIN")
            conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute("CREATE TABLE map (key TEXT NOT NULL, value TEXT NOT NULL)")
            conn.executemany("INSERT INTO meta VALUES (?, ?)",
                             [("format", FORMAT), ("type", kind), ("source", source)])
            count = 0

            def rows() -> Iterator[tuple[str, str]]:
                nonlocal count
                for entry in entries:
                    count += 1
                    yield entry.key, entry.value
            conn.executemany("INSERT INTO map VALUES (?, ?)", rows())
            conn.execute("CREATE UNIQUE INDEX map_key ON map (key)")
            conn.execute("COMMIT")
        finally:
            conn.close()
        os.chmod(tmp, mode & 0o7777)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, out)
        fsync_dir(directory)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return count


def open_map(path: str) -> tuple[sqlite3.Connection, str]:
    """Open a built map read-only; (connection, type).  BackendError if unfit."""
    try:
        kind = sniff(path)
    except OSError as e:
        raise BackendError(f"{path}: {e.strerror or e}") from None
    if kind == "berkeley":
        raise BackendError(berkeley_advice(path))
    if kind != "sqlite":
        raise BackendError(f"{path}: not a map built by `postillion makemap`"
                           f" ({'empty file' if kind == 'empty' else 'unknown format'})")
    conn = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True,
                           isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA query_only = ON")
        # Read through a memory map (no read(2) per page); the file is only
        # ever replaced by rename, so the mapping stays that of our inode.
        conn.execute(f"PRAGMA mmap_size = {MMAP_SIZE}")
        conn.execute("SELECT key, value FROM map LIMIT 0")
        try:
            row = conn.execute("SELECT value FROM meta WHERE name = 'type'").fetchone()
        except sqlite3.OperationalError:
            row = None          # a hand-built map(key, value): a map
        map_type = row[0] if row else "map"
        if map_type not in TYPES:
            raise BackendError(f'{path}: unknown map type "{map_type}"')
    except sqlite3.Error as e:
        conn.close()
        raise BackendError(f"{path}: not a map built by `postillion makemap` ({e})") from None
    except BaseException:
        conn.close()
        raise
    return conn, map_type


def read_map(path: str) -> tuple[str, list[tuple[str, str]]]:
    """(type, rows in source order) of a built map, for `makemap -U`."""
    conn, kind = open_map(path)
    try:
        rows = conn.execute("SELECT key, value FROM map ORDER BY rowid").fetchall()
    except sqlite3.Error as e:
        raise BackendError(f"{path}: {e}") from None
    finally:
        conn.close()
    return kind, rows
