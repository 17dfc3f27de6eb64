"""`postillion ctl VERB` and `postillion mailq`: smtpctl's command line.

Verbs are words matched by unique prefix, as smtpctl's (`sh q` is `show
queue`); what follows the verb's words are its arguments.  Every verb
takes `--json` and then prints the daemon's answer as JSON, in the shapes
docs/ctl-schema.json gives (one object per line for `monitor`).  Exit status:
0 done, 1 refused or not found, 2 usage, 3 the daemon cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any, Final

from postillion.control import protocol as wire
from postillion.control.client import UNAVAILABLE, ControlFailed, request
from postillion.paths import DEFAULT_SPOOL, SPOOL_ENV, spool_dir

#: Every verb, as its words.  Verbs without a daemon (encrypt) are local.
VERBS: Final[tuple[str, ...]] = (
    "show queue", "show envelope", "show message", "show stats", "show status",
    "show hosts", "show hoststats", "show relays", "show routes",
    "schedule", "remove",
    "pause mda", "pause mta", "pause smtp", "pause envelope",
    "resume mda", "resume mta", "resume smtp", "resume envelope", "resume route",
    "update table", "trace", "untrace", "log verbose", "log brief",
    "monitor", "encrypt", "reload", "stop",
)

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 3


class UsageError(Exception):
    pass


def match_verb(words: list[str]) -> tuple[str, list[str]]:
    """(verb, arguments) for the words typed; each word may be a unique
    prefix among the verbs still possible at its place."""
    candidates = [v.split() for v in VERBS]
    depth = 0
    while True:
        if depth >= len(words):
            break
        live = [c for c in candidates if len(c) > depth]
        if not live:
            break
        word = words[depth].lower()
        exact = [c for c in live if c[depth] == word]
        chosen = exact or [c for c in live if c[depth].startswith(word)]
        if not chosen:
            if any(len(c) == depth for c in candidates):
                break
            raise UsageError(f"unknown verb: {' '.join(words[:depth + 1])}")
        names = {c[depth] for c in chosen}
        if len(names) > 1:
            raise UsageError(f"ambiguous: {words[depth]!r} may be " + ", ".join(sorted(names)))
        candidates = chosen + [c for c in candidates if len(c) == depth]
        candidates = [c for c in candidates if len(c) > depth and c[depth] in names]
        depth += 1
    complete = [c for c in candidates if len(c) == depth]
    if not complete:
        options = sorted({" ".join(c[:depth + 1]) for c in candidates})
        raise UsageError("incomplete verb; one of: " + ", ".join(options))
    return " ".join(complete[0]), words[depth:]


# -- printing -----------------------------------------------------------------


def queue_line(env: dict[str, Any]) -> str:
    """smtpctl's `show queue` line:
    evpid|family|type|flags|sender|rcpt|dest|ctime|expire|lasttry|retries|runstate|error"""
    state = env["runstate"]
    runstate = f"{state}|{env['runstate-secs']}" if state != "offline" else "offline|"
    return "|".join([
        env["evpid"], env["family"], env["type"], ",".join(env["flags"]),
        env["sender"], env["rcpt"], env["dest"], str(env["ctime"]), str(env["expire"]),
        str(env["lasttry"]), str(env["retries"]), runstate, env["error"]])


def _text(item: Any) -> str:
    if isinstance(item, (list, tuple)):
        return ",".join(_text(i) for i in item)
    if isinstance(item, dict):
        return ",".join(f"{k}={_text(v)}" for k, v in item.items())
    if isinstance(item, bool):
        return "yes" if item else "no"
    return "" if item is None else str(item)


def print_value(value: Any) -> None:
    """`key: value` lines for an object; for a list, one line per item, an
    object's values joined with `|` as smtpctl's listings."""
    if isinstance(value, dict):
        for key, item in value.items():
            print(f"{key}: {_text(item)}")
    elif isinstance(value, list):
        for item in value:
            print("|".join(_text(v) for v in item.values()) if isinstance(item, dict) else _text(item))
    elif value is not None:
        print(value)


def print_stats(value: Any) -> None:
    """`show stats`: `name=value` lines, as smtpctl's."""
    for key, item in value.items():
        print(f"{key}={item}")


def _progress(label: str) -> tuple[Callable[[Any], None], Callable[[], None]]:
    from postillion.tools import Progress
    bar: list[Progress] = []

    def on_part(part: Any) -> None:
        if isinstance(part, dict) and "total" in part:
            if not bar:
                bar.append(Progress(label, int(part["total"])))
            bar[0].update(int(part["done"]))

    def finish() -> None:
        if bar:
            bar[0].finish()
    return on_part, finish


def show_queue(args: argparse.Namespace, rest: list[str]) -> int:
    pieces: list[dict[str, Any]] = []
    on_progress, finish = _progress("scanning the queue")

    def on_part(part: Any) -> None:
        pieces.extend(part.get("envelopes", []))
        on_progress(part)
    result = request(spool_dir(args.spool), "show queue", rest, on_part=on_part)
    finish()
    pieces.extend(result.get("envelopes", []))
    if args.json:
        print(json.dumps(pieces, indent=1))
    else:
        for env in pieces:
            print(queue_line(env))
    return EXIT_OK


def show_message(args: argparse.Namespace, rest: list[str]) -> int:
    """The message as queued: its octets, or with --json one object whose
    `data` is its text (octets that are not UTF-8 as \\udcXX escapes)."""
    out = sys.stdout.buffer
    pieces: list[str] = []

    def on_part(part: Any) -> None:
        data = str(part.get("data", ""))
        if args.json:
            pieces.append(data)
        else:
            out.write(data.encode("utf-8", "surrogateescape"))
    request(spool_dir(args.spool), "show message", rest, on_part=on_part)
    if args.json:
        print(json.dumps({"data": "".join(pieces)}))
    out.flush()
    return EXIT_OK


def monitor(args: argparse.Namespace, rest: list[str]) -> int:
    """One line per second until interrupted (or --count lines)."""
    header: list[str] = []

    def on_part(part: Any) -> None:
        if args.json:
            print(json.dumps(part), flush=True)
            return
        if not header:
            header.extend(part.keys())
            print(" ".join(f"{k:>9}" for k in header), flush=True)
        print(" ".join(f"{part.get(k, ''):>9}" for k in header), flush=True)
    try:
        request(spool_dir(args.spool), "monitor", rest, on_part=on_part)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def encrypt_local(args: argparse.Namespace, rest: list[str]) -> int:
    """As smtpctl's: computed here, no daemon needed."""
    from postillion.tools import cmd_encrypt
    if len(rest) > 1:
        raise UsageError("usage: encrypt [password]")
    if not args.json:
        return cmd_encrypt(argparse.Namespace(password=rest[0] if rest else None))
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cmd_encrypt(argparse.Namespace(password=rest[0] if rest else None))
    if status == 0:
        print(json.dumps({"encrypted": out.getvalue().strip()}))
    return status


#: Verbs printed their own way; every other verb prints its result.
SPECIAL: Final[dict[str, Callable[[argparse.Namespace, list[str]], int]]] = {
    "show queue": show_queue, "show message": show_message, "monitor": monitor,
    "encrypt": encrypt_local,
}


def cmd_ctl(args: argparse.Namespace) -> int:
    try:
        verb, rest = match_verb(args.words)
        special = SPECIAL.get(verb)
        if special is not None:
            return special(args, rest)
        result = request(spool_dir(args.spool), verb, rest)
        if args.json:
            print(json.dumps(result, indent=1))
        elif verb == "show stats":
            print_stats(result)
        else:
            print_value(result)
        return EXIT_OK
    except UsageError as e:
        print(f"postillion ctl: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ControlFailed as e:
        print(f"postillion ctl: {e.text}", file=sys.stderr)
        if e.status == UNAVAILABLE:
            return EXIT_UNAVAILABLE
        return EXIT_USAGE if e.status == wire.USAGE else EXIT_REFUSED
    except BrokenPipeError:
        return EXIT_OK


def cmd_mailq(args: argparse.Namespace) -> int:
    args.words = ["show", "queue"]
    return cmd_ctl(args)


def register(sub: Any) -> None:
    """Add `ctl` and `mailq` to the `postillion` parser."""
    ctl = sub.add_parser(
        "ctl", help="control the running daemon (smtpctl's verbs)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Send one verb to the daemon through its control socket "
                    f"(control.sock in the spool: -s, else ${SPOOL_ENV}, else "
                    f"{DEFAULT_SPOOL}).  Words may be unique prefixes (`sh q`).  "
                    "Root may use every verb; other users `show queue`, `show "
                    "envelope` and `show message` of the mail they sent, and `encrypt`.\n\n"
                    "verbs:\n  " + "\n  ".join(VERBS) +
                    "\n\nexit status: 0 done, 1 refused or not found, 2 usage, "
                    "3 daemon unreachable")
    ctl.add_argument("-s", "--spool", help=f"the daemon's spool (default: ${SPOOL_ENV} "
                                           f"or {DEFAULT_SPOOL})")
    ctl.add_argument("--json", action="store_true",
                     help="print the daemon's answer as JSON (docs/ctl-schema.json)")
    ctl.add_argument("words", nargs="+", metavar="VERB", help="verb words, then its arguments")
    ctl.set_defaults(func=cmd_ctl)

    mailq = sub.add_parser("mailq", help="list the queue (= ctl show queue)",
                           description="List the queue, one line per envelope, as "
                                       "`postillion ctl show queue`.")
    mailq.add_argument("-s", "--spool", help=f"the daemon's spool (default: ${SPOOL_ENV} "
                                             f"or {DEFAULT_SPOOL})")
    mailq.add_argument("--json", action="store_true", help="print the envelopes as JSON")
    mailq.set_defaults(func=cmd_mailq)


