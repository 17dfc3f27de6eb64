"""The mail log: one line per event, in OpenSMTPD 6.8's layout (docs/logs.md).

`SESSIONID SUBSYSTEM EVENT key=value ...` -- fail2ban filters and log parsers
written for OpenSMTPD keep working.  Every mail-log line is written by one
function here (chasquid's habit), so keys and outcome words are spelled once.
Values with blanks or quotes are quoted; `"`, `\\` and control bytes are
escaped as `\\xNN`, so envelope data (a HELO, an address) can never forge a
second log line; so are bytes that were not UTF-8, so every line encodes.

A leaf module: anyone may import it.
"""

from __future__ import annotations

import errno
import logging
import secrets

logger = logging.getLogger("postillion.mail")

RESULT_OK = "Ok"
RESULT_TEMPFAIL = "TempFail"
RESULT_PERMFAIL = "PermFail"


def new_id() -> str:
    """A fresh 16-hex session (or delivery) id."""
    return f"{secrets.randbits(64):016x}"


def escape(value: object) -> str:
    """Render one value: bare when safe, else quoted with escapes."""
    text = str(value)
    out = []
    needs_quotes = text == ""
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
            needs_quotes = True
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
            needs_quotes = True
        elif 0xD800 <= code <= 0xDFFF:
            # A byte that was not UTF-8 (surrogateescape: an AUTH user name):
            # no encoder -- syslog's UTF-8 -- may meet it raw.
            out.append(f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}")
            needs_quotes = True
        else:
            if ch in " \t'":
                needs_quotes = True
            out.append(ch)
    body = "".join(out)
    return f'"{body}"' if needs_quotes else body


def format_delay(seconds: float) -> str:
    """`1d2h3m4s` like OpenSMTPD's duration_to_text; `0s` for nothing."""
    left = max(0, int(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    if left or not parts:
        parts.append(f"{left}s")
    return "".join(parts)


def event(sid: str, subsystem: str, name: str, **fields: object) -> None:
    """Write one event line; keys use `-` where Python needs `_`."""
    items = " ".join(f"{k.replace('_', '-')}={escape(v)}" for k, v in fields.items())
    logger.info("%s %s %s%s", sid, subsystem, name, f" {items}" if items else "")


def path(address: str) -> str:
    return f"<{address}>"


# -- smtp: the inbound side ---------------------------------------------------

def smtp_connected(sid: str, address: str, host: str) -> None:
    event(sid, "smtp", "connected", address=address, host=host)


def smtp_failed_command(sid: str, command: str, reply: object) -> None:
    event(sid, "smtp", "failed-command", command=command, result=str(reply))


def smtp_tls(sid: str, ciphers: str, verified: str) -> None:
    """TLS is up: `version:cipher:bits`, client certificate YES|NO."""
    event(sid, "smtp", "tls", ciphers=ciphers, verified=verified)


def smtp_tls_failure(sid: str, reason: str) -> None:
    event(sid, "smtp", "tls-failure", reason=reason)


def smtp_authentication(sid: str, user: str, result: str) -> None:
    """An AUTH ended: result ok|permfail|tempfail; never the password."""
    event(sid, "smtp", "authentication", user=user, result=result)


def smtp_bad_input(sid: str, result: object) -> None:
    event(sid, "smtp", "bad-input", result=str(result))


def smtp_envelope(sid: str, evpid: int, sender: str, rcpt: str) -> None:
    event(sid, "smtp", "envelope", evpid=f"{evpid:016x}", **{"from": path(sender), "to": path(rcpt)})


def smtp_message(sid: str, msgid: int, size: int, nrcpt: int, proto: str,
                 user: str | None = None, uid: int | None = None) -> None:
    """A message queued; `user` and `uid` name the local user who submitted
    it with `sendmail` (whatever sender it claimed)."""
    extra = {} if user is None else {"user": user, "uid": uid}
    event(sid, "smtp", "message", msgid=f"{msgid:08x}", size=size, nrcpt=nrcpt, proto=proto,
          **extra)


def smtp_disconnected(sid: str, reason: str) -> None:
    event(sid, "smtp", "disconnected", reason=reason)


# -- mda: local deliveries ----------------------------------------------------

def mda_delivery(sid: str, evpid: int, sender: str, dest: str, rcpt: str, user: str,
                 delay: float, result: str, stat: str) -> None:
    event(sid, "mda", "delivery", evpid=f"{evpid:016x}", **{"from": path(sender)},
          to=path(dest), rcpt=path(rcpt), user=user, delay=format_delay(delay),
          result=result, stat=stat)


#: Where syslog listens on every Linux system that runs one.
SYSLOG_SOCKET = "/dev/log"


def _probe_syslog(path: str) -> None:
    """Raise OSError unless a syslog daemon accepts connections at `path`."""
    import socket
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as probe:
            try:
                probe.connect(path)
                return
            except OSError as e:
                if e.errno != errno.EPROTOTYPE:
                    raise
    raise OSError(errno.EPROTOTYPE, "not a syslog socket")


#: The variable systemd sets when a service's stderr is a journal stream
#: (systemd.exec(5)): "DEVICE:INODE" of that stream.
JOURNAL_STREAM_ENV = "JOURNAL_STREAM"


def stderr_is_journal() -> bool:
    """Whether our stderr is the journal stream systemd gave the service.

    Compared by device and inode as systemd.exec(5) asks: a child whose
    stderr was redirected elsewhere inherits the variable, not the stream."""
    import os
    device, colon, inode = os.environ.get(JOURNAL_STREAM_ENV, "").partition(":")
    try:
        st = os.fstat(2)
        return bool(colon) and (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


class JournalFormatter(logging.Formatter):
    """Lines for a journal stream: no time (the journal stamps each line),
    and each line prefixed `<N>` with its syslog priority (sd-daemon(3)), so
    `journalctl -p warning` finds the warnings."""

    PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4,
                  logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{self.PRIORITIES.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def setup(foreground: bool, verbose: bool = False, syslog_socket: str = SYSLOG_SOCKET,
          announce: bool = True) -> str:
    """Log to stderr in the foreground (`-d`), else to syslog's mail facility.

    Without a syslog socket that accepts a connection, the lines go to
    stderr and one line there says why -- never silently to UDP port 514,
    where nothing may be listening.  Returns where the log goes: "stderr",
    "journal" (stderr, when it is systemd's journal stream) or "syslog".

    One handler, whatever the case: a line is written once, to one place.
    Under systemd without `-d` that is /dev/log (journald's syslog socket:
    facility mail, each process's own pid); with `-d` it is the journal
    stream, in JournalFormatter's layout.
    """
    import sys
    root = logging.getLogger("postillion")
    root.handlers.clear()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    handler: logging.Handler | None = None
    if not foreground:
        from logging.handlers import SysLogHandler
        try:
            _probe_syslog(syslog_socket)   # SysLogHandler ignores a failed connect
            handler = SysLogHandler(address=syslog_socket, facility=SysLogHandler.LOG_MAIL)
            handler.setFormatter(logging.Formatter("postillion[%(process)d]: %(message)s"))
        except OSError as e:
            if announce:   # once: the parent says it, its processes follow quietly
                print(f"postillion: no syslog at {syslog_socket} ({e.strerror or e}); "
                      "logging to stderr", file=sys.stderr)
            handler = None
    where = "syslog"
    if handler is None:
        handler = logging.StreamHandler()
        if stderr_is_journal():
            handler.setFormatter(JournalFormatter("%(message)s"))
            where = "journal"
        else:
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%b %d %H:%M:%S"))
            where = "stderr"
    root.addHandler(handler)
    return where
