"""Checks `postillion check` runs beyond the grammar: can the tables serve?

The parser knows every use of a table (`Config.table_uses`); these checks ask
the table layer whether each backend exists and can serve the service a
statement needs, and load the local ones (file, db) as the daemon will --
through the daemon's own `make_table` and `verify` -- so a missing file or a
malformed value is found by `check`, not at start.  Servers (SQL, LDAP...)
are not contacted.
"""

from __future__ import annotations

import asyncio

from postillion.config.model import Config, Position
from postillion.daemon import make_table
from postillion.table.errors import TableError
from postillion.table.registry import backend_class
from postillion.table.services import Service

Problem = tuple[Position, str]

#: Every backend planned (docs/tables.md); one the table layer lacks yet is a warning.
SPEC_BACKENDS = frozenset({"static", "file", "db", "getpwnam", "sqlite", "postgres", "mysql",
                           "redis", "ldap", "socketmap", "proc"})

#: Backends whose tables are local files: `check` loads them as the daemon will.
LOCAL_BACKENDS = frozenset({"file", "db"})


def table_problems(config: Config) -> tuple[list[Problem], list[Problem]]:
    """(errors, warnings) about the config's tables; a backend planned but
    the runtime lacks is a warning (the daemon refuses it at start)."""
    problems: list[Problem] = []
    later: list[Problem] = []
    for decl in config.tables.values():
        try:
            backend_class(decl.name, decl.backend, decl.config)
        except TableError as e:
            if decl.backend in SPEC_BACKENDS:
                later.append((decl.pos, f'table backend "{decl.backend}" is not implemented '
                                        "by the runtime yet"))
            else:
                problems.append((decl.pos, str(e)))
    for use in config.table_uses:
        decl = config.tables[use.table]
        try:
            cls = backend_class(decl.name, decl.backend, decl.config)
        except TableError:
            continue
        if Service(use.service) not in cls.services:
            shown = "this inline table" if use.table.startswith("anon:") else f"table {use.table}"
            problems.append((use.pos, f"{shown} (backend {decl.backend}) cannot serve the "
                                      f"{use.service} service this statement needs"))
    problems += asyncio.run(_local_table_problems(config))
    return sorted(set(problems), key=lambda p: p[0]), later


async def _local_table_problems(config: Config) -> list[Problem]:
    problems: list[Problem] = []
    for decl in config.tables.values():
        try:
            if decl.config is None or \
                    backend_class(decl.name, decl.backend, decl.config).name not in LOCAL_BACKENDS:
                continue
            table = make_table(decl, config.limits.sub_addr_delim)
            await table.open()
        except TableError as e:
            problems.append((decl.pos, str(e)))
            continue
        try:
            # Each use checked where it is written, so the error names that line.
            for use in config.table_uses:
                if use.table == decl.name:
                    try:
                        await table.verify(Service(use.service))
                    except TableError as e:
                        problems.append((use.pos, str(e)))
        finally:
            await table.close()
    return problems
