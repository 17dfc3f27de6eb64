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
from postillion.paths import DEFAULT_CONFIG, DEFAULT_SPOOL
from postillion.tools import parse_defines

DEMO_ROOT = "var"


def resolve_config(args: argparse.Namespace) -> tuple[Path, Path]:
    """The config and spool to use: -f/-s, the installed defaults, or --demo.

    The demo is written only when asked for (`make run` asks): a daemon
    started by an init system from `/` must read /etc/postillion, never
    create a demo in /var."""
    if args.demo:
        if args.file is not None:
            raise SystemExit("postillion: --demo runs the demo configuration; it takes no -f")
        from postillion.demo import ensure_demo
        demo = ensure_demo(Path(DEMO_ROOT))
        return demo.config, Path(args.spool) if args.spool else demo.spool
    return Path(args.file or DEFAULT_CONFIG), Path(args.spool or DEFAULT_SPOOL)


def load_config(path: Path, defines: list[str]):  # type: ignore[no-untyped-def]
    """The parsed Config, or None after printing every error (file:line:column)."""
    from postillion.config import ConfigError, load
    try:
        return load(path, parse_defines(defines))
    except ConfigError as e:
        print(e, file=sys.stderr)
    except OSError as e:
        print(f"{path}: {e.strerror or e}", file=sys.stderr)
    return None


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a config (either grammar); -v prints the normalised model,
    --convert prints it in the modern grammar.  Exit 1 whenever
    `postillion run` would refuse the configuration (options not
    implemented yet included), naming file:line:column."""
    import json

    from postillion.config.normal import ConvertError, normalise, to_modern
    from postillion.config.support import unsupported
    from postillion.checks import preflight, table_problems
    path = Path(args.file) if args.file else Path(DEFAULT_CONFIG)
    config = load_config(path, args.define)
    if config is None:
        return 1
    # -v and --convert are about the grammar: they print whatever the
    # runtime thinks of the configuration; the exit status says that.
    if args.verbose:
        print(json.dumps(normalise(config), indent=2))
    if args.convert:
        try:
            sys.stdout.write(to_modern(config))
        except ConvertError as e:
            print(e, file=sys.stderr)
            return 1
    from postillion.table.backends import proc as proc_backend
    previous = proc_backend.run_helpers_as(_daemon_helper_user(config))
    try:
        problems = sorted({*table_problems(config), *unsupported(config)}, key=lambda p: p[0])
        if problems:
            print("\n".join(f"{pos}: {message}" for pos, message in problems), file=sys.stderr)
            return 1
        if (refusal := preflight(config)) is not None:
            print(refusal, file=sys.stderr)
            return 1
    finally:
        proc_backend.run_helpers_as(previous)      # `check` may run inside another program
    print("configuration OK", file=sys.stderr)
    return 0


def _daemon_helper_user(config) -> tuple[int, int] | None:  # type: ignore[no-untyped-def]
    """As root, `check` starts a table's helper (`proc:`, `table-X`) as the
    daemon would: as the queue user, so that a helper only root could run
    fails here as it would there.  None when not root, or when the queue
    user does not exist (`run`'s to report)."""
    import os

    from postillion.daemon import StartupError
    from postillion.daemon.family import role_user
    if os.geteuid() != 0:
        return None
    try:
        return role_user(config)
    except StartupError:
        return None


def cmd_run(args: argparse.Namespace) -> int:
    from postillion import log
    from postillion.daemon import StartupError
    from postillion.daemon.parent import Parent
    from postillion.daemon.reload import ConfigSource

    path, spool = resolve_config(args)
    config = load_config(path, args.define)
    if config is None:
        if args.file is None and not args.demo and not path.exists():
            print("postillion: give a configuration with -f FILE, or run the demo "
                  "under ./var with --demo (make run)", file=sys.stderr)
        return 1
    log.setup(foreground=args.debug, verbose=args.verbose)
    try:
        import uvloop  # optional speed (pyproject extra "speed")
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(Parent(config, spool, paused=frozenset(args.pause), foreground=args.debug,
                      verbose=args.verbose,
                      source=ConfigSource.of(path, parse_defines(args.define))).serve())
    except StartupError as e:
        print(f"postillion: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    """Explain where mail to one address goes (daemon/routing_explain.py):
    exit 0 deliverable, 1 refused (5xx), 2 temporary or a configuration,
    table or DNS error (4xx), as `table lookup`."""
    import json

    from postillion.config import ConfigError, load
    from postillion.daemon import routing_show
    from postillion.daemon.routing_explain import EXIT_TEMPORARY, Question, RouteError, explain
    import logging
    # Errors are reported here; the tables' warnings would repeat them.
    logging.getLogger("postillion").addHandler(logging.NullHandler())
    path = Path(args.file) if args.file else Path(DEFAULT_CONFIG)
    try:
        config = load(path, parse_defines(args.define))
    except ConfigError as e:
        print(e, file=sys.stderr)
        return EXIT_TEMPORARY
    except OSError as e:
        print(f"{path}: {e.strerror or e}", file=sys.stderr)
        return EXIT_TEMPORARY
    address = args.address
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    sender = args.sender or ""
    if sender.startswith("<") and sender.endswith(">"):
        sender = sender[1:-1]
    question = Question(address, sender=sender, src=args.src, auth=args.auth, tls=args.tls)
    try:
        explanation = asyncio.run(explain(config, question))
    except RouteError as e:
        print(f"postillion: {e}", file=sys.stderr)
        return EXIT_TEMPORARY
    if args.json:
        print(json.dumps(routing_show.as_json(explanation), indent=2))
    else:
        sys.stdout.write(routing_show.text(explanation))
    return explanation.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="postillion", description="Postillion, a mail transfer agent modelled on OpenSMTPD.")
    parser.add_argument("--version", action="version", version=f"postillion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run the daemon in the foreground",
                         description=f"Run the daemon on a configuration (default: "
                                     f"{DEFAULT_CONFIG}), or on the demo under ./var with --demo.")
    run.add_argument("-f", "--file", help=f"configuration file (default: {DEFAULT_CONFIG})")
    run.add_argument("--demo", action="store_true",
                     help="run the demo configuration under ./var, writing what is missing "
                          "(what `make run` does)")
    run.add_argument("-s", "--spool", help=f"queue directory (default: {DEFAULT_SPOOL}, "
                                           "or ./var/spool for the demo)")
    run.add_argument("-d", "--debug", action="store_true", help="log to stderr instead of syslog")
    run.add_argument("-v", "--verbose", action="store_true", help="verbose logging")
    run.add_argument("-D", "--define", action="append", default=[], metavar="NAME=VALUE",
                     help="set a macro, overriding the file")
    run.add_argument("-P", "--pause", action="append", default=[], choices=["mda", "mta", "smtp"],
                     help="start with this subsystem paused (as smtpd -P): mda and mta "
                          "queue mail without delivering or relaying it, smtp refuses new "
                          "clients with 421; `postillion ctl resume ...` ends it")
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

    route = sub.add_parser(
        "route", help="explain where mail to an address goes (like exim -bt)",
        description="Explain, without queueing or sending anything, what the daemon does "
                    "with mail to ADDRESS: the match rule that decides, the reply to RCPT, "
                    "the expansion (aliases, virtual, .forward, :include:) and each final "
                    "delivery: method, user, path or command, or the relay's MX hosts in the "
                    "order tried.  Exit 0 deliverable, 1 refused (5xx), 2 temporary (4xx) "
                    "or an error in the configuration, a table or the DNS.")
    route.add_argument("-f", "--file", help=f"configuration file (default: {DEFAULT_CONFIG})")
    route.add_argument("-D", "--define", action="append", default=[], metavar="NAME=VALUE",
                       help="set a macro, overriding the file")
    route.add_argument("--from", dest="sender", metavar="SENDER", default=None,
                       help="the MAIL FROM address (default: <>, the null sender)")
    route.add_argument("--src", metavar="IP", default=None,
                       help="the client's IP address (default: a local client, `from local`)")
    route.add_argument("--auth", metavar="USER", default=None,
                       help="the session authenticated as USER (`match auth`)")
    route.add_argument("--tls", action="store_true", help="the session is encrypted (`match tls`)")
    route.add_argument("--json", action="store_true",
                       help="print one JSON object (shape in docs/commands.md)")
    route.add_argument("address", metavar="ADDRESS", help="the recipient, as in RCPT TO")
    route.set_defaults(func=cmd_route)

    from postillion.tools import register as register_table_tools
    register_table_tools(sub)     # table lookup|dump, makemap, newaliases, encrypt
    from postillion.control.ctl import register as register_ctl
    register_ctl(sub)             # ctl, mailq
    # Listed here; main() hands its arguments to control/sendmail.py as
    # they are, since Sendmail's options are not argparse's (-oi, -FName).
    sub.add_parser("sendmail", add_help=False,
                   help="submit a message from standard input (Sendmail's command line; "
                        "postillion sendmail --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["sendmail"]:
        from postillion.control.sendmail import main as sendmail
        return sendmail(args_list[1:])
    args = build_parser().parse_args(args_list)
    return int(args.func(args))


def mailq_main() -> int:
    """The `mailq` console script: `postillion mailq`."""
    return main(["mailq", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
