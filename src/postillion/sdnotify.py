"""Telling the service manager how the daemon is doing: sd_notify(3).

Under systemd with `Type=notify` (contrib/postillion.service), the manager
passes `NOTIFY_SOCKET`, the address of a datagram socket, and waits for
`READY=1` before it counts the service as started -- so `systemctl start`
returns, and units ordered after Postillion start, only once mail can be
taken.  The protocol is one datagram of `KEY=value` lines; the address is a
path, or an abstract socket name written with a leading `@`.  That is all
libsystemd's sd_notify does for us, so no library is needed.

Only the parent notifies: the manager accepts messages from the main
process alone (`NotifyAccess=main`), and a role that said `READY=1` or
`STOPPING=1` on its own would lie about the whole daemon.  So the variable
is taken out of the environment when the Notifier is made (as sd_notify's
`unset_environment` does), before any role or worker is started.

Without `NOTIFY_SOCKET` every call does nothing.  A datagram that cannot
be sent is logged once and forgotten: the daemon never stops for its
manager's sake.

A leaf module: anyone may import it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator, MutableMapping
from typing import Final

logger = logging.getLogger("postillion.sdnotify")

#: The variable the service manager sets (sd_notify(3)).
NOTIFY_SOCKET_ENV: Final = "NOTIFY_SOCKET"
#: Seconds a datagram may wait for room in the manager's socket buffer; the
#: manager reads at once, so only a wedged one makes us wait this long.
SEND_TIMEOUT: Final = 1.0
#: Longest STATUS= text sent: systemctl shows one line.
STATUS_MAX: Final = 400


def parse_address(value: str) -> str | bytes | None:
    """The socket address NOTIFY_SOCKET names, or None for one we cannot use.

    `/path` is a file-system socket, `@name` an abstract one (the kernel's
    name starts with a NUL byte).  Anything else (systemd 254's `vsock:`
    addresses, a relative path) is not for us."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode("utf-8", "surrogateescape")
    return None


def _one_line(text: str) -> str:
    """A STATUS= value: one line, bounded (the protocol is line-based)."""
    return " ".join(text.split())[:STATUS_MAX]


class Notifier:
    """The parent's line to its service manager; does nothing without one."""

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address
        self._warned = False

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """Take NOTIFY_SOCKET out of the environment (so no role or worker
        inherits it) and return a Notifier for it."""
        env = os.environ if environ is None else environ
        value = env.pop(NOTIFY_SOCKET_ENV, None)
        if value is None:
            return cls(None)
        address = parse_address(value)
        if address is None:
            logger.warning("%s=%s is not a socket address this daemon can use; "
                           "the service manager will not hear from it", NOTIFY_SOCKET_ENV, value)
        return cls(address)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: object) -> bool:
        """One datagram, `KEY=value` per line in the order given (READY,
        STATUS, ...): sd_notify's whole protocol.  Returns whether it went."""
        if self.address is None:
            return False
        payload = "".join(f"{key}={value}\n" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(SEND_TIMEOUT)
                sock.sendto(payload.encode("utf-8", "surrogateescape"), self.address)
        except OSError as e:
            if not self._warned:
                self._warned = True
                logger.warning("cannot notify the service manager at %r: %s",
                               self.address, e.strerror or e)
            return False
        return True

    def ready(self, status: str) -> bool:
        """Startup (or a reload) is complete: every listener is bound and
        every role has said Hello."""
        return self.send(READY=1, MAINPID=os.getpid(), STATUS=_one_line(status))

    def stopping(self, status: str = "stopping") -> bool:
        return self.send(STOPPING=1, STATUS=_one_line(status))

    def status(self, status: str) -> bool:
        """Just the line `systemctl status` shows (a failed start, say)."""
        return self.send(STATUS=_one_line(status))

    def reloading(self, status: str = "reloading") -> bool:
        """A reload begins.  MONOTONIC_USEC lets a `Type=notify-reload`
        manager (systemd 253+) tell this reload from an older one."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(RELOADING=1, MONOTONIC_USEC=usec, STATUS=_one_line(status))

    @contextlib.contextmanager
    def reload(self, done: str = "ready") -> Iterator[None]:
        """`RELOADING=1` now, `READY=1` (with `done` as the status) when the
        block ends, however it ends: a reload that fails keeps the old
        configuration serving, so the daemon is ready again either way.

            with parent.notifier.reload("ready: tables updated"):
                await update_everything()
        """
        self.reloading()
        try:
            yield
        finally:
            self.ready(done)
