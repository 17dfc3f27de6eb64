"""`sendmail` (and `postillion sendmail`): the Sendmail command line that
cron, PHP's mail(), git send-email and mail(1) use to submit a message.

It runs as the invoking user, with no privilege at all: it reads the
message from standard input, adds what a submission lacks -- `Date:`,
`Message-ID:`, `From:` -- removes `Bcc:`, writes CRLF line ends, and sends
the envelope and the message to the running daemon in one `enqueue`
request on its control socket (control/enqueue.py).  The daemon learns who
sent it from the kernel, not from us.  Everything else (rules, aliases,
size limits, the `Received:` header) is the daemon's.

Exit status from sysexits.h, one line on stderr for any error
(docs/commands.md#sendmail).
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import secrets
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.utils import formataddr, formatdate, getaddresses
from typing import BinaryIO, Final

from postillion.control import protocol as wire
from postillion.control.client import UNAVAILABLE, ControlFailed, request
from postillion.control.enqueue import DEFAULT_SENDER, NULL_SENDER
from postillion.paths import DEFAULT_SPOOL, SPOOL_ENV, spool_dir

# sysexits.h
EX_OK: Final = 0
EX_USAGE: Final = 64          # a bad option, no recipients
EX_DATAERR: Final = 65        # the message or an address refused for good, too big
EX_NOUSER: Final = 67         # a recipient unknown (550 5.1.1)
EX_UNAVAILABLE: Final = 69    # the daemon is not running (no control socket)
EX_SOFTWARE: Final = 70       # the daemon answered what we cannot read
EX_TEMPFAIL: Final = 75       # try again later (4xx)
EX_NOPERM: Final = 77         # the daemon refused us

#: Most octets read from standard input.  The daemon's own limit
#: (`smtp max-message-size`, 35 MiB by default) is what refuses a message;
#: this only bounds what the command holds in memory, since it cannot read
#: the configuration to know that limit.
MAX_INPUT: Final = 256 * 1024 * 1024
#: Seconds to wait for the daemon's answer: an smtp process queues the
#: message (its local session may take 120 s; the queue tries up to three
#: processes, waiting 90 s for one).
ENQUEUE_TIMEOUT: Final = 600.0

#: Options taking a value that are accepted and ignored: -B body type
#: (8BITMIME: every message is taken as it is), -N DSN notify, -R DSN
#: return, -V envelope id, -h hop count, -L syslog label, -A (-Am/-Ac).
IGNORED_WITH_VALUE: Final = frozenset("BNRVhLA")
#: Flags accepted and ignored: -v verbose, -m send to me too, -U initial
#: user submission, -G gateway submission.
IGNORED_FLAGS: Final = frozenset("vmUG")
#: -o options accepted and ignored: error modes (-oem, -oee, -oep, -oeq,
#: -oew: errors are always this command's stderr and exit status),
#: delivery modes (-odb, -odi, -odq, -odf: the message is always queued),
#: -om (me too), -o7 and -o8.
IGNORED_O: Final = frozenset({"m", "7", "8", "e", "em", "ee", "ep", "eq", "ew",
                              "d", "db", "di", "dq", "df", "dd"})

USAGE: Final = """\
usage: sendmail [-t] [-i | -oi] [-f SENDER] [-F NAME] [--] [RECIPIENT ...]
       sendmail -bp    (list the queue, as mailq)

Submit the message on standard input to the running Postillion daemon
through its control socket (control.sock in ${env}, else {spool}).

  -t          take recipients from the To:, Cc: and Bcc: headers too
              (added to any given as arguments)
  -i, -oi     a line holding only "." does not end the message
  -f SENDER   envelope sender (-f '<>' or -f '' for the null sender);
              default LOGIN@HOSTNAME.  -r is the same.
  -F NAME     full name for the From: header added when there is none
  -bm         submit a message (the default);  -bp  list the queue
  --help      this text

Accepted and ignored: -v -m -U -G -oem -oee -oep -oeq -oew -odb -odi -odq
-odf -om -o7 -o8 -B TYPE -N DSN -R RET -V ENVID -h N -L LABEL.
Without -i, a line holding only "." ends the message.  Date:, Message-ID:
and From: are added when missing; Bcc: is removed.

exit status (sysexits.h): 0 queued, 64 usage or no recipients, 65 message
or address refused, 67 unknown recipient, 69 daemon not running,
75 temporary failure (try again), 77 not allowed
"""


class UsageError(Exception):
    pass


@dataclass(slots=True)
class Options:
    extract: bool = False               # -t
    dot_ends: bool = True               # no -i: a lone "." line ends the message
    sender: str | None = None           # -f/-r as given (None: not given)
    fullname: str | None = None         # -F
    mode: str = "m"                     # -bm submit, -bp list the queue
    help: bool = False
    recipients: list[str] = field(default_factory=list)


def parse_args(argv: list[str]) -> Options:
    """Sendmail's options, getopt-style: flags may be grouped (`-ti`), a
    value may be attached (`-fuser@host`, `-FCronDaemon`) or follow, `--`
    ends the options, the first non-option starts the recipients."""
    opts = Options()
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            break
        if arg in ("--help", "-?"):
            opts.help = True
            continue
        if not arg.startswith("-") or arg == "-":
            i -= 1
            break
        if arg.startswith("--"):
            raise UsageError(f"unknown option {arg}")
        j = 1
        while j < len(arg):
            letter = arg[j]
            j += 1
            if letter == "t":
                opts.extract = True
            elif letter == "i":
                opts.dot_ends = False
            elif letter in IGNORED_FLAGS:
                pass
            elif letter in "fFrbBNRVhLAo":
                value = arg[j:]
                if not value and letter != "o":
                    if i >= len(argv):
                        raise UsageError(f"option -{letter} needs a value")
                    value = argv[i]
                    i += 1
                take_value(opts, letter, value)
                break
            else:
                raise UsageError(f"unknown option -{letter}")
    opts.recipients = argv[i:]
    return opts


def take_value(opts: Options, letter: str, value: str) -> None:
    if letter in "fr":
        opts.sender = value
    elif letter == "F":
        opts.fullname = value
    elif letter == "b":
        if value not in ("m", "p"):
            what = {"s": " (SMTP on standard input is not supported; use the SMTP port)",
                    "i": " (use postillion newaliases)",
                    "d": " (start the daemon with postillion run)"}.get(value, "")
            raise UsageError(f"unsupported mode -b{value}{what}")
        opts.mode = value
    elif letter == "o":
        if value == "i":
            opts.dot_ends = False
        elif value not in IGNORED_O:
            raise UsageError(f"unsupported option -o{value}")
    # IGNORED_WITH_VALUE: nothing to do


# -- the message ----------------------------------------------------------------

_FIELD = re.compile(rb"[!-9;-~]+:")


def read_message(stream: BinaryIO, dot_ends: bool, limit: int = MAX_INPUT) -> list[bytes]:
    """The message's lines, without their line ends: up to the end of the
    input, or (`dot_ends`) a line holding only ".".  Longer than `limit`
    octets is a ValueError."""
    lines, total = [], 0
    while True:
        line = stream.readline(limit + 1 - total)
        if not line:
            break
        total += len(line)
        if total > limit:
            raise ValueError(f"message longer than {limit} octets")
        if line.endswith(b"\n"):
            line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if dot_ends and line == b".":
            break
        lines.append(line)
    return lines


@dataclass(slots=True)
class Prepared:
    message: bytes                      # CRLF line ends, what the daemon queues
    header_rcpts: list[str]             # To:, Cc:, Bcc: addresses (for -t)


def split_header(lines: list[bytes]) -> tuple[list[list[bytes]], list[bytes]]:
    """(header fields, each its lines with continuations; the body).  The
    header ends at an empty line (dropped) or at the first line that is not
    a header field (kept as the body's first: the blank line is added)."""
    fields: list[list[bytes]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line == b"":
            i += 1
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        elif _FIELD.match(line):
            fields.append([line])
        else:
            break
        i += 1
    return fields, lines[i:]


def field_name(field_lines: list[bytes]) -> str:
    return field_lines[0].split(b":", 1)[0].decode("ascii", "replace").strip().lower()


def field_value(field_lines: list[bytes]) -> str:
    raw = b" ".join(line.strip() for line in [field_lines[0].split(b":", 1)[1], *field_lines[1:]])
    return raw.decode("utf-8", "surrogateescape").strip()


def addresses(values: Iterable[str]) -> list[str]:
    """The addresses of address-list texts ("Name <a@b>, c@d"), groups'
    members included, empty ones (an empty group) left out."""
    return [addr.strip() for _name, addr in getaddresses(list(values)) if addr.strip()]


def prepare(lines: list[bytes], from_address: str, fullname: str | None,
            hostname: str) -> Prepared:
    """Add `From:`, `Date:` and `Message-ID:` where missing, remove `Bcc:`
    (and `Resent-Bcc:`), and join with CRLF; nothing else is touched."""
    fields, body = split_header(lines)
    names = {field_name(f) for f in fields}
    header_rcpts = addresses(field_value(f) for f in fields if field_name(f) in ("to", "cc", "bcc"))
    kept = [f for f in fields if field_name(f) not in ("bcc", "resent-bcc")]
    added: list[str] = []
    if "from" not in names:
        added.append(f"From: {from_header(from_address, fullname)}")
    if "date" not in names:
        added.append(f"Date: {formatdate(localtime=True)}")
    if "message-id" not in names:
        added.append(f"Message-ID: <{int(time.time())}.{secrets.token_hex(8)}@{hostname}>")
    header = [line for f in kept for line in f] + [a.encode("utf-8") for a in added]
    message = b"".join(line + b"\r\n" for line in [*header, b"", *body])
    return Prepared(message, header_rcpts)


def from_header(address: str, fullname: str | None) -> str:
    if not fullname:
        return address
    try:
        return formataddr((fullname, address))       # quoted or RFC 2047 as needed
    except UnicodeError:                              # an SMTPUTF8 address
        return f'"{fullname}" <{address}>'


def login_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        raise SystemExit(_fail(EX_NOPERM, f"uid {os.getuid()} has no entry in the password "
                                          "database: no login name to send mail as")) from None


def sender_arg(value: str | None) -> str:
    """The enqueue request's sender: DEFAULT_SENDER without -f, NULL_SENDER
    for `-f <>` or `-f ""`, else the address (without angle brackets)."""
    if value is None:
        return DEFAULT_SENDER
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    return value or NULL_SENDER


def _fail(code: int, text: str) -> int:
    print(f"sendmail: {text}", file=sys.stderr)
    return code


#: Control status -> exit status.
EXIT_FOR: Final = {
    UNAVAILABLE: EX_UNAVAILABLE, wire.DATAERR: EX_DATAERR, wire.NOT_FOUND: EX_NOUSER,
    wire.TEMPFAIL: EX_TEMPFAIL, wire.DENIED: EX_NOPERM, wire.USAGE: EX_USAGE,
}


def main(argv: list[str] | None = None) -> int:
    """The `sendmail` console script and `postillion sendmail`."""
    args = sys.argv[1:] if argv is None else argv
    try:
        opts = parse_args(args)
    except UsageError as e:
        return _fail(EX_USAGE, f"{e} (sendmail --help lists the options)")
    if opts.help:
        sys.stdout.write(USAGE.format(env=SPOOL_ENV, spool=DEFAULT_SPOOL))
        return EX_OK
    if opts.mode == "p":
        from postillion.control.ctl import cmd_mailq
        return cmd_mailq(argparse.Namespace(spool=None, json=False))
    rcpts = addresses(opts.recipients)
    if not rcpts and not opts.extract:
        return _fail(EX_USAGE, "no recipients: give them as arguments, or -t to take them "
                               "from the To:, Cc: and Bcc: headers")
    try:
        return submit(opts, rcpts)
    except KeyboardInterrupt:
        return _fail(EX_TEMPFAIL, "interrupted; nothing sent")
    except SystemExit as e:
        return int(e.code or 0)


def submit(opts: Options, rcpts: list[str]) -> int:
    from postillion.config.files import default_hostname
    login = login_name()
    hostname = default_hostname()
    sender = sender_arg(opts.sender)
    from_address = sender if sender not in (DEFAULT_SENDER, NULL_SENDER) else f"{login}@{hostname}"
    try:
        lines = read_message(sys.stdin.buffer, opts.dot_ends)
    except ValueError as e:
        return _fail(EX_DATAERR, str(e))
    except OSError as e:
        return _fail(EX_DATAERR, f"standard input: {e.strerror or e}")
    prepared = prepare(lines, from_address, opts.fullname, hostname)
    if opts.extract:
        rcpts = list(dict.fromkeys([*rcpts, *prepared.header_rcpts]))
    if not rcpts:
        return _fail(EX_USAGE, "no recipients: -t found no To:, Cc: or Bcc: header with an address")
    try:
        result = request(spool_dir(), "enqueue", [sender, *rcpts], body=prepared.message,
                         timeout=ENQUEUE_TIMEOUT)
    except ControlFailed as e:
        return _fail(EXIT_FOR.get(e.status, EX_SOFTWARE), e.text)
    if not isinstance(result, dict) or "msgid" not in result:
        return _fail(EX_SOFTWARE, f"unexpected answer from the daemon: {result!r}")
    return EX_OK
