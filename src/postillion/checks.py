"""Checks `postillion check` runs beyond the grammar: would `run` start?

The parser knows every use of a table (`Config.table_uses`); these checks ask
the table layer whether each backend exists and can serve the service a
statement needs, and load the local ones (file, db, sqlite) as the daemon
will -- through the daemon's own `make_table` and `verify` -- so a missing
file or a malformed value is found by `check`, not at start, and every one
of them is named in one run.  Networked SQL tables (postgres, mysql) are
opened the same way, which connects to the server and runs each configured
query once (docs/tables.md), each table bounded by `NETWORK_CHECK_TIMEOUT`
so an unreachable server costs `check` seconds, not a hang.  Then `preflight` runs the daemon's own
`prepare` (options not implemented yet, tables, certificates, AUTH tables):
whatever the configuration makes `postillion run` refuse, `check` refuses
too.  The spool and the ports are the machine's, not the configuration's,
and are left to `run`.
"""

from __future__ import annotations

import asyncio

from pathlib import Path

from postillion.config.model import Config, Position, TableDecl
from postillion.daemon import Daemon, StartupError, make_table
from postillion.table.errors import TableError
from postillion.table.registry import backend_class
from postillion.table.services import Service

Problem = tuple[Position, str]

#: Every backend the documentation names; one the table layer lacks yet is
#: refused by the daemon, and so by check, with this word.
KNOWN_BACKENDS = frozenset({"static", "file", "db", "getpwnam", "sqlite", "postgres", "mysql",
                            "redis", "ldap", "socketmap", "proc"})

#: Backends `check` opens (files read, servers connected and an ldap directory
#: bound with each filter run once, helpers started) as the daemon will.
LOCAL_BACKENDS = frozenset({"file", "db", "sqlite", "redis", "socketmap", "proc", "ldap"})

#: Backends on a server: `check` connects and runs each query once, as `open` does.
NETWORK_BACKENDS = frozenset({"postgres", "mysql"})

#: Seconds `check` gives one networked table to connect, check its queries
#: and answer `verify` (the table's own open timeout is 10 s).
NETWORK_CHECK_TIMEOUT = 15.0


def table_problems(config: Config) -> list[Problem]:
    """Every problem with the config's tables, each at the line to change."""
    problems: list[Problem] = []
    for decl in config.tables.values():
        try:
            backend_class(decl.name, decl.backend, decl.config)
        except TableError as e:
            if decl.backend in KNOWN_BACKENDS:
                problems.append((decl.pos, f'table backend "{decl.backend}" is not implemented '
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
    return sorted(set(problems), key=lambda p: p[0])


def preflight(config: Config) -> str | None:
    """Why `postillion run` would refuse this configuration, or None.

    The daemon's own `prepare`, on a spool it never opens."""
    async def dry() -> str | None:
        daemon = Daemon(config, Path("/nonexistent"))
        try:
            await daemon.prepare()
        except StartupError as e:
            return str(e)
        finally:
            await daemon.stop()      # tables, the AUTH pool: nothing left running
        return None
    return asyncio.run(dry())


async def _local_table_problems(config: Config) -> list[Problem]:
    problems: list[Problem] = []
    for decl in config.tables.values():
        try:
            if decl.config is None:
                continue
            name = backend_class(decl.name, decl.backend, decl.config).name
            if name not in LOCAL_BACKENDS | NETWORK_BACKENDS:
                continue
        except TableError:
            continue            # reported by table_problems
        try:
            async with asyncio.timeout(NETWORK_CHECK_TIMEOUT):
                problems += await _check_table(config, decl)
        except TimeoutError:
            reason = f"table {decl.name}: {name}: no answer within {NETWORK_CHECK_TIMEOUT:g} s"
            problems.append((decl.pos, reason))
    return problems


async def _check_table(config: Config, decl: TableDecl) -> list[Problem]:
    """Open one table as the daemon will and verify each use of it."""
    problems: list[Problem] = []
    try:
        table = make_table(decl, config.limits.sub_addr_delim)
        await table.open()
    except TableError as e:
        return [(decl.pos, str(e))]
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
