"""The table tools of the `postillion` command (docs/commands.md).

* `postillion table lookup [-f CONF] TABLE SERVICE KEY`: one lookup through
  the real backend, as the daemon would make it, like `postmap -q`: prints
  the typed value; exit 0 found, 1 not found, 2 error.
* `postillion table dump [-f CONF] TABLE SERVICE`: every entry, where the
  backend can list (static, file, db).
* `postillion makemap [-t map|aliases|set] [-o OUT] [-U] FILE|-`: build the
  compiled map a `db:` table reads (`table/dbfile.py`), atomically.
* `postillion newaliases [-f CONF]`: `makemap -t aliases` of the file behind
  table `aliases` (its path minus `.db`), else of /etc/aliases.
* `postillion encrypt [PASSWORD]`: a bcrypt hash for a credentials table.

Errors are one line on stderr (a config error: one line per problem),
never a traceback.  `register()` adds the verbs to `cli.py`'s parser.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

if TYPE_CHECKING:
    from postillion.table import Table

EXIT_FOUND: Final = 0
EXIT_NOT_FOUND: Final = 1
EXIT_ERROR: Final = 2
DEFAULT_ALIASES: Final = "/etc/aliases"
PROGRESS_MIN_BYTES: Final = 1 << 20     # inputs from 1 MiB get a progress bar on a terminal


class ToolError(Exception):
    """A failure to report as one line on stderr."""


def fail(message: str) -> None:
    print(f"postillion: {message}", file=sys.stderr)


def _default_config() -> str:
    from postillion.paths import DEFAULT_CONFIG
    return DEFAULT_CONFIG


def _quiet_table_log() -> None:
    """The tools report errors themselves; the daemon's warnings would repeat them."""
    logging.getLogger("postillion").addHandler(logging.NullHandler())


# ------------------------------------------------------------------ progress


class Progress:
    """A one-line progress bar on a terminal, redrawn at most 10 times a second.

    Silent (every method a no-op) unless `stream` is a terminal: a pipe or a
    log file never gets carriage returns.
    """

    WIDTH: Final = 30

    def __init__(self, label: str, total: int, stream: TextIO | None = None,
                 enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.label = label
        self.total = max(total, 1)
        self.enabled = enabled and self.stream.isatty()
        self._next = 0.0

    def update(self, done: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now < self._next:
            return
        self._next = now + 0.1
        fraction = min(done / self.total, 1.0)
        filled = int(fraction * self.WIDTH)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\r{self.label} [{bar}] {fraction * 100:3.0f}%")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.update(self.total, force=True)
            self.stream.write("\n")
            self.stream.flush()


# ------------------------------------------------------------------ tables


def parse_defines(values: list[str]) -> dict[str, str]:
    """`-D NAME=VALUE` options (repeatable) as the macros they define."""
    defines = {}
    for item in values:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise SystemExit(f"postillion: -D expects name=value, got {item!r}")
        defines[name] = value
    return defines


def _load_config(path_arg: str | None, defines: list[str]) -> Any:
    from postillion.config import ConfigError, load
    path = Path(path_arg) if path_arg else Path(_default_config())
    try:
        return load(path, parse_defines(defines))
    except ConfigError as e:
        raise ToolError(str(e)) from None
    except OSError as e:
        raise ToolError(f"{path}: {e.strerror or e}") from None


def _find_table(config: Any, name: str) -> Table:
    """The table named in the config, built as the daemon builds it (not opened)."""
    from postillion.daemon import make_table
    from postillion.table import TableError, open_table
    bare = name[1:-1] if name.startswith("<") and name.endswith(">") else name
    decl = config.tables.get(bare)
    try:
        if decl is not None:
            return make_table(decl, config.limits.sub_addr_delim)
        if bare == "getpwnam":
            return open_table("<getpwnam>", "getpwnam", None)
    except TableError as e:
        raise ToolError(str(e)) from None
    raise ToolError(f"no such table: {bare}")


def _service(name: str) -> Any:
    from postillion.table import Service
    try:
        return Service(name.lower())
    except ValueError:
        known = ", ".join(s.value for s in Service)
        raise ToolError(f'unknown service "{name}" (known: {known})') from None


async def _lookup(table: Table, service: Any, key: str) -> str | None:
    from postillion.table import Service
    from postillion.table.values import render
    table.require(service)
    if service is Service.AUTH:
        return "found" if await table.check(service, key) else None
    value = await table.lookup(service, key)
    return None if value is None else render(value)


async def _dump(table: Table, service: Any) -> list[str]:
    from postillion.table.values import render
    return [render(value) if key is None else f"{key} {render(value)}"
            for key, value in await table.dump(service)]


def _run_on_table(args: argparse.Namespace, make_job: Any) -> Any:
    """Load the config, open the table, run the job; ToolError on any failure."""
    from postillion.errors import MailError
    from postillion.table import TableError
    _quiet_table_log()
    config = _load_config(args.file, args.define)
    service = _service(args.service)
    table = _find_table(config, args.table)

    async def main() -> Any:
        await table.open()
        try:
            return await make_job(table, service)
        finally:
            await table.close()
    try:
        return asyncio.run(main())
    except TableError as e:
        raise ToolError(str(e)) from None
    except MailError as e:       # LookupUnavailable: backend down, timeout, malformed value
        raise ToolError(e.reason or str(e)) from None


def cmd_table_lookup(args: argparse.Namespace) -> int:
    try:
        found = _run_on_table(args, lambda t, s: _lookup(t, s, args.key))
    except ToolError as e:
        fail(str(e))
        return EXIT_ERROR
    if found is None:
        print(f"postillion: {args.key!r} not found in table {args.table} ({args.service})",
              file=sys.stderr)
        return EXIT_NOT_FOUND
    print(found)
    return EXIT_FOUND


def cmd_table_dump(args: argparse.Namespace) -> int:
    try:
        lines = _run_on_table(args, _dump)
    except ToolError as e:
        fail(str(e))
        return EXIT_ERROR
    out = sys.stdout
    for line in lines:
        out.write(line + "\n")
    return 0


# ------------------------------------------------------------------ makemap


def _umask_mode() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def build_map(source: str, out: str | None, kind: str, *, progress: bool = True) -> tuple[str, int]:
    """Build `out` (default `source.db`) from text `source` ("-": stdin).

    Returns (output path, entries).  Raises ToolError naming `file:line`.
    """
    from postillion.table.dbfile import parse_source, sniff, write_map
    from postillion.table.errors import BackendError
    if source == "-":
        if out is None:
            raise ToolError("makemap: reading standard input needs -o OUT")
        data = sys.stdin.buffer.read()
        origin, mode = "<stdin>", _umask_mode()
    else:
        try:
            if sniff(source) in ("sqlite", "berkeley"):
                raise ToolError(f"{source}: is a database already; give the text file it is"
                                " built from")
            with open(source, "rb") as f:
                mode = os.fstat(f.fileno()).st_mode & 0o777
                data = f.read()
        except OSError as e:
            raise ToolError(f"{source}: {e.strerror or e}") from None
        origin = source
    out = out if out is not None else f"{source}.db"
    if source != "-" and os.path.abspath(out) == os.path.abspath(source):
        raise ToolError(f"{out}: the map would replace its own source")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ToolError(f"{origin}:{line}: not UTF-8 text") from None
    show = progress and len(data) >= PROGRESS_MIN_BYTES
    lines = text.count("\n") + 1
    reading = Progress(f"makemap: reading {origin}", lines, enabled=show)
    try:
        entries = parse_source(text, origin, kind, reading.update)
        reading.finish()
        writing = Progress(f"makemap: writing {out}", len(entries), enabled=show)

        def counted() -> Any:
            for i, entry in enumerate(entries):
                if i & 4095 == 0:
                    writing.update(i)
                yield entry
        count = write_map(counted(), out, kind, origin, mode)
        writing.finish()
    except BackendError as e:
        raise ToolError(str(e)) from None
    except OSError as e:
        raise ToolError(f"{out}: {e.strerror or e}") from None
    except Exception as e:       # sqlite3.Error on a full disk, ...
        raise ToolError(f"{out}: {e}") from None
    return out, count


def cmd_makemap(args: argparse.Namespace) -> int:
    from postillion.table.dbfile import read_map
    from postillion.table.errors import BackendError
    try:
        if args.dump:
            if args.file == "-":
                raise ToolError("makemap -U: give the map file, not standard input")
            try:
                kind, rows = read_map(args.file)
            except BackendError as e:
                raise ToolError(str(e)) from None
            out = sys.stdout
            for key, value in rows:
                out.write(f"{value}\n" if kind == "set" else f"{key} {value}\n")
            return 0
        build_map(args.file, args.output, args.type)
    except ToolError as e:
        fail(str(e))
        return 1
    return 0


def cmd_newaliases(args: argparse.Namespace) -> int:
    from postillion.table.dbfile import source_of
    try:
        path = args.file or _default_config()
        if args.file is None and not os.path.exists(path):
            decl = None                       # no config at all: the system's aliases
        else:
            decl = _load_config(path, args.define).tables.get("aliases")
        if decl is None:
            source, out = DEFAULT_ALIASES, DEFAULT_ALIASES + ".db"
        elif decl.backend == "db" and decl.config:
            source, out = source_of(decl.config), decl.config
        elif decl.backend in ("file", "static") and decl.config:
            print(f"postillion: table aliases is the text file {decl.config}, read as it is;"
                  " nothing to build", file=sys.stderr)
            return 0
        else:
            raise ToolError(f"table aliases (backend {decl.backend}) is not a db map;"
                            " nothing for newaliases to build")
        if source == out:
            raise ToolError(f"table aliases: {out} does not end in .db; cannot tell its source")
        _, count = build_map(source, out, "aliases")
    except ToolError as e:
        fail(str(e))
        return 1
    print(f"{out}: {count} aliases", file=sys.stderr)
    return 0


# ------------------------------------------------------------------ encrypt


def encrypt(password: str) -> str:
    """A bcrypt `$2b$` hash of `password`, as a listener's credentials hold,
    at the cost the listener's unknown-user check assumes until it has seen
    the table's own (`ENCRYPT_BCRYPT_COST`)."""
    import bcrypt

    from postillion.lookup.hashwork import ENCRYPT_BCRYPT_COST
    raw = password.encode("utf-8")
    if not raw:
        raise ToolError("encrypt: empty password")
    if len(raw) > 72:
        raise ToolError("encrypt: password longer than 72 bytes (bcrypt ignores the rest)")
    return bcrypt.hashpw(raw, bcrypt.gensalt(rounds=ENCRYPT_BCRYPT_COST, prefix=b"2b")).decode("ascii")


def cmd_encrypt(args: argparse.Namespace) -> int:
    try:
        if args.password is not None:
            password = args.password
        elif sys.stdin.isatty():
            password = getpass.getpass("password: ")
        else:
            password = sys.stdin.readline().rstrip("\r\n")
        print(encrypt(password))
    except ToolError as e:
        fail(str(e))
        return 1
    except (EOFError, KeyboardInterrupt):
        return 1
    return 0


# ------------------------------------------------------------------ parser


SERVICES_HELP: Final = ("alias, domain, credentials, netaddr, userinfo, source, mailaddr,"
                        " addrname, mailaddrmap, relayhost, string, regex, auth")


def _config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--file", default=None,
                   help=f"configuration file (default: {_default_config()})")
    p.add_argument("-D", "--define", action="append", default=[], metavar="NAME=VALUE",
                   help="set a macro, overriding the file")


def register(sub: Any) -> None:
    """Add `table`, `makemap`, `newaliases` and `encrypt` to the `postillion` parser."""
    table = sub.add_parser(
        "table", help="look up or dump a table of the configuration",
        description="Query a table of the configuration through its real backend.")
    verbs = table.add_subparsers(dest="table_command", metavar="VERB", required=True)

    lookup = verbs.add_parser(
        "lookup", help="one lookup, like postmap -q",
        description="Look KEY up in TABLE for SERVICE, as the daemon would, and print the "
                    "typed value.  Exit 0 if found, 1 if not found, 2 on error (no such "
                    f"table, backend down, malformed value).  Services: {SERVICES_HELP}.")
    _config_options(lookup)
    lookup.add_argument("table", metavar="TABLE", help="table name as declared (or getpwnam)")
    lookup.add_argument("service", metavar="SERVICE", help="what the lookup is for")
    lookup.add_argument("key", metavar="KEY", help="the key, as a client would send it")
    lookup.set_defaults(func=cmd_table_lookup)

    dump = verbs.add_parser(
        "dump", help="print every entry of a static, file or db table",
        description="Print every entry of TABLE as typed values for SERVICE: `key value` "
                    "lines for a map, one element per line for a list.  Backends that "
                    "cannot list (sqlite, getpwnam) are an error (exit 2).")
    _config_options(dump)
    dump.add_argument("table", metavar="TABLE")
    dump.add_argument("service", metavar="SERVICE")
    dump.set_defaults(func=cmd_table_dump)

    makemap = sub.add_parser(
        "makemap", help="build a db map from a text file",
        description="Build FILE.db (an SQLite map read by `db:` tables) from the text FILE "
                    "(`key value` lines; `-` reads standard input and needs -o).  The map "
                    "is written aside, fsynced and renamed over the old one.  Keys are "
                    "lowercased; a duplicate key is an error naming both lines.")
    makemap.add_argument("-t", "--type", choices=("map", "aliases", "set"), default="map",
                         help="map (default); aliases: also check alias targets; "
                              "set: a list, one element per line")
    makemap.add_argument("-o", "--output", metavar="OUT", help="output file (default FILE.db)")
    makemap.add_argument("-U", "--dump", action="store_true",
                         help="print the contents of the map FILE instead")
    makemap.add_argument("file", metavar="FILE", help="source text file, or - for stdin")
    makemap.set_defaults(func=cmd_makemap)

    newaliases = sub.add_parser(
        "newaliases", help="rebuild the aliases map",
        description="Rebuild the db map of table `aliases` from its text file (the map's "
                    f"path without .db), or {DEFAULT_ALIASES}.db if the configuration has "
                    "no such table.  Same as makemap -t aliases.")
    _config_options(newaliases)
    newaliases.set_defaults(func=cmd_newaliases)

    enc = sub.add_parser(
        "encrypt", help="print a bcrypt hash for a credentials table",
        description="Print a bcrypt ($2b$) hash of PASSWORD, the form a listener's "
                    "credentials table stores.  Without PASSWORD, read one line from "
                    "standard input (without echo on a terminal).")
    enc.add_argument("password", metavar="PASSWORD", nargs="?")
    enc.set_defaults(func=cmd_encrypt)
