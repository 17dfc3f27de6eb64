"""Reading config files and the machine's default mail name.

Kept apart from the grammar because this is the only I/O the config layer
does: a config file is read whole and checked before parsing (regular file,
bounded size, UTF-8), so no input can make the parser block or raise
anything but `ConfigError`.
"""

from __future__ import annotations

import os
import socket
import stat

from postillion.config.model import Position

MAX_CONFIG_BYTES = 16 * 1024 * 1024   # one file; a bigger one is a mistake


def default_hostname() -> str:
    """The name used when smtpd.conf has no `hostname`: /etc/mailname, else
    the machine's fully qualified name, as OpenSMTPD's getmailname().

    The FQDN is the canonical name of gethostname() (AI_CANONNAME), not
    socket.getfqdn(): getfqdn goes through the address's reverse name, which
    on a machine whose /etc/hosts maps its name to 127.0.0.1 after
    `localhost` is "localhost" -- a banner no peer can tell from any other.
    A canonical name of localhost is never taken; the short name is then.
    """
    try:
        with open("/etc/mailname", "rb") as f:
            first = f.read(256).decode("utf-8", "replace").splitlines()
        name = first[0].strip() if first else ""
        if name and not any(ch.isspace() for ch in name):
            return name
    except OSError:
        pass
    host = socket.gethostname()
    if "." in host:
        return host
    try:
        infos = socket.getaddrinfo(host, None, flags=socket.AI_CANONNAME)
    except (OSError, UnicodeError):
        infos = []
    for *_, canonical, _addr in infos:
        if canonical and not canonical.lower().startswith("localhost"):
            return str(canonical)
    return host


def read_text(file: str, at: Position, errors: list[tuple[Position, str]]) -> str | None:
    """A config file's text, or None with the reason added to `errors`.

    Only regular files (not /dev/zero, not a FIFO), at most MAX_CONFIG_BYTES,
    UTF-8 (a bad byte is reported at its own line and column).
    """
    try:
        info = os.stat(file)
        if not stat.S_ISREG(info.st_mode):
            errors.append((at, f"cannot read {file}: not a regular file"))
            return None
        with open(file, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        errors.append((at, f"cannot read {file}: {reason}"))
        return None
    if len(data) > MAX_CONFIG_BYTES:
        errors.append((at, f"cannot read {file}: larger than {MAX_CONFIG_BYTES // 1024 // 1024} MiB"))
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = data[: e.start]
        line = before.count(b"\n") + 1
        column = len(before.rsplit(b"\n", 1)[-1].decode("utf-8", "replace")) + 1
        errors.append((Position(file, line, column), "not valid UTF-8"))
        return None
    return text.removeprefix("\ufeff")
