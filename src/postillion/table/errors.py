"""The table layer's own errors, and how they reach the rest of the daemon.

Three kinds, because their audiences differ:

* `TableError` is for the administrator at config load, `update table` or
  start-up: an unknown backend, a file that does not parse, a table used for a
  service it cannot answer.  Its message names the table and, where there is
  one, `file:line`.  `postillion check` prints it; the daemon refuses to start.
* `BackendError` is what a backend raises for *any* failure of one operation
  (server down, SQL error, unreadable file).  The `Table` turns it into
  `postillion.errors.LookupUnavailable` (451 4.3.0) for lookups, or into a
  `TableError` for open/update.  A backend never passes "down" off as "absent".
* `MalformedValue` is raised by a value parser when a backend's string does
  not fit its service.  Its message names table, service, key and what is
  wrong, never the value (it may be a password hash).
"""

from __future__ import annotations

from postillion.table.services import Service


class TableError(Exception):
    """A table cannot be built, opened, updated or used as configured."""


class BackendError(Exception):
    """One backend operation failed; temporary from the mail's point of view."""


class MalformedValue(ValueError):
    """A backend returned a value its service's parser rejects."""

    def __init__(self, service: Service, key: str, reason: str, table: str = "") -> None:
        self.table = table
        self.service = service
        self.key = key
        self.reason = reason
        where = f"table {table}: " if table else ""
        super().__init__(
            f"{where}malformed {service.value} value for key {printable(key, service)}: {reason}"
        )


def _escape(c: str) -> str:
    if c in '"\\':
        return "\\" + c
    if c.isprintable():
        return c
    return c.encode("unicode_escape", "backslashreplace").decode("ascii")


def printable(key: str, service: Service | None = None, limit: int = 100) -> str:
    """A key (or any client-controlled text) as it may appear in a log line.

    Quoted, with quotes, backslashes and non-printable characters escaped,
    and bounded: keys come from SMTP clients (RCPT TO, AUTH), so they may
    carry CR, LF or NUL meant to forge log lines.  An `auth` key is
    `user:cleartext`: only the user part is ever shown.
    """
    if service is Service.AUTH:
        key = key.split(":", 1)[0] + ":***"
    shown = key if len(key) <= limit else key[:limit] + "..."
    return '"' + "".join(_escape(c) for c in shown) + '"'
