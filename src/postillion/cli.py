"""The `postillion` command: run the daemon, check a config.

Every verb has `--help`; errors are one line on stderr and a non-zero exit,
never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from postillion import __version__

DEFAULT_CONFIG = "/etc/postillion/postillion.conf"
DEFAULT_SPOOL = "/var/spool/postillion"
DEMO_ROOT = "var"


def parse_defines(values: list[str]) -> dict[str, str]:
    defines = {}
    for item in values:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise SystemExit(f"postillion: -D expects name=value, got {item!r}")
        defines[name] = value
    return defines


def resolve_config(args: argparse.Namespace) -> tuple[Path, Path]:
    """The config and spool to use: -f/-s, or the demo under ./var."""
    if args.file is not None:
        return Path(args.file), Path(args.spool or DEFAULT_SPOOL)
    from postillion.demo import ensure_demo
    demo = ensure_demo(Path(DEMO_ROOT))
    return demo.config, Path(args.spool) if args.spool else demo.spool


#: Every backend SPEC §2 names; one the table layer lacks yet is a warning in check.
SPEC_BACKENDS = frozenset({"static", "file", "db", "getpwnam", "sqlite", "postgres", "mysql",
                           "redis", "ldap", "socketmap", "proc"})


def table_problems(config):  # type: ignore[no-untyped-def]
    """Tables whose backend is unknown or can never serve the service a statement
    needs (SPEC §1.1), found without opening them; the daemon checks the rest
    (an SQLite table without the query, a file that is a list) when it opens them.
    Returns (errors, warnings): a backend SPEC names but the runtime lacks is a warning."""
    from postillion.table.errors import TableError
    from postillion.table.registry import backend_class
    from postillion.table.services import Service
    problems, later = [], []
    for decl in config.tables.values():
        try:
            backend_class(decl.name, decl.backend, decl.config)
        except TableError as e:
            if decl.backend in SPEC_BACKENDS:   # in SPEC §2, not built yet: the daemon refuses
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
    problems += local_table_problems(config)
    return sorted(set(problems), key=lambda p: p[0]), later


#: Backends whose tables are local files: check loads them as the daemon will.
LOCAL_BACKENDS = frozenset({"file", "db"})


def local_table_problems(config):  # type: ignore[no-untyped-def]
    """Load file and db tables as the daemon would, and ask each for the services
    its uses need: a missing file, a malformed value, a list used as a userbase
    are found by `check`, not at start (SPEC §1.1).  Servers (SQL, LDAP...) are
    not contacted."""
    import asyncio

    from postillion.table.errors import TableError
    from postillion.table.registry import backend_class
    from postillion.table.services import Service
    from postillion.table.table import open_table

    async def load():  # type: ignore[no-untyped-def]
        problems = []
        for decl in config.tables.values():
            try:
                if decl.config is None or \
                        backend_class(decl.name, decl.backend, decl.config).name not in LOCAL_BACKENDS:
                    continue
                table = open_table(decl.name, decl.backend, decl.config,
                                   sub_addr_delim=config.limits.sub_addr_delim)
                await table.open()
            except TableError as e:
                problems.append((decl.pos, str(e)))
                continue
            try:
                for use in config.table_uses:
                    if use.table == decl.name:
                        try:
                            table.require(Service(use.service))
                        except TableError as e:
                            problems.append((use.pos, str(e)))
            finally:
                await table.close()
        return problems

    return asyncio.run(load())


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a config (either grammar); -v prints the normalised model,
    --convert prints it in the modern grammar.  Options the runtime does
    not implement yet are warnings here (the daemon refuses them)."""
    import json

    from postillion.config import ConfigError, load
    from postillion.config.normal import ConvertError, normalise, to_modern
    from postillion.config.support import unsupported
    path = Path(args.file) if args.file else Path(DEFAULT_CONFIG)
    try:
        config = load(path, parse_defines(args.define))
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{path}: {e.strerror or e}", file=sys.stderr)
        return 1
    problems, later = table_problems(config)
    if problems:
        print("\n".join(f"{pos}: {message}" for pos, message in problems), file=sys.stderr)
        return 1
    if args.verbose:
        print(json.dumps(normalise(config), indent=2))
    if args.convert:
        try:
            sys.stdout.write(to_modern(config))
        except ConvertError as e:
            print(e, file=sys.stderr)
            return 1
    for pos, message in sorted([*unsupported(config), *later], key=lambda p: p[0]):
        print(f"{pos}: warning: {message}; postillion run will refuse this configuration",
              file=sys.stderr)
    print("configuration OK", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from postillion import log
    from postillion.config import ConfigError, load
    from postillion.daemon import Daemon, StartupError

    path, spool = resolve_config(args)
    try:
        config = load(path, parse_defines(args.define))
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{path}: {e.strerror or e}", file=sys.stderr)
        return 1
    log.setup(foreground=args.debug, verbose=args.verbose)
    try:
        import uvloop  # optional speed (pyproject extra "speed")
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(Daemon(config, spool, paused=frozenset(args.pause)).serve())
    except StartupError as e:
        print(f"postillion: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="postillion", description="Postillion, a mail transfer agent modelled on OpenSMTPD.")
    parser.add_argument("--version", action="version", version=f"postillion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run the daemon in the foreground",
                         description="Run the daemon.  Without -f, runs the demo configuration "
                                     "under ./var (written there if missing).")
    run.add_argument("-f", "--file", help="configuration file (default: the demo under ./var)")
    run.add_argument("-s", "--spool", help=f"queue directory (default: {DEFAULT_SPOOL}, "
                                           "or ./var/spool for the demo)")
    run.add_argument("-d", "--debug", action="store_true", help="log to stderr instead of syslog")
    run.add_argument("-v", "--verbose", action="store_true", help="verbose logging")
    run.add_argument("-D", "--define", action="append", default=[], metavar="NAME=VALUE",
                     help="set a macro, overriding the file")
    run.add_argument("-P", "--pause", action="append", default=[], choices=["mda"],
                     help="start with this subsystem paused (as smtpd -P): mail is "
                          "accepted and queued but not delivered")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate a configuration file",
                           description="Validate a configuration; exit 0 if valid, 1 if not.")
    check.add_argument("-f", "--file", help=f"configuration file (default: {DEFAULT_CONFIG})")
    check.add_argument("-v", "--verbose", action="store_true",
                       help="print the normalised model (JSON, positions left out)")
    check.add_argument("--convert", action="store_true",
                       help="print the configuration in the modern grammar (2012 "
                            "accept/reject rules become match rules)")
    check.add_argument("-D", "--define", action="append", default=[], metavar="NAME=VALUE",
                       help="set a macro, overriding the file")
    check.set_defaults(func=cmd_check)

    from postillion.tools import register as register_table_tools
    register_table_tools(sub)     # table lookup|dump, makemap, newaliases, encrypt
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
