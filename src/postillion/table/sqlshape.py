"""From SQL rows to the raw string a service's parser reads (docs/tables.md, sqlite).

Shared by every SQL backend (SQLite now, PostgreSQL and MySQL later) so the
column rules are the same everywhere: alias and mailaddrmap take one column
and join all rows with `, `; credentials take two (`user:secret`); userinfo
three (`uid:gid:home`); every other service one column of the first row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from postillion.table.errors import BackendError
from postillion.table.services import Service

COLUMNS: Final[dict[Service, int]] = {Service.CREDENTIALS: 2, Service.USERINFO: 3}
JOINED: Final = frozenset({Service.ALIAS, Service.MAILADDRMAP})

# Services an SQL table can have a query for (`query_<service>`), docs/tables.md.
SQL_SERVICES: Final = frozenset({
    Service.ALIAS, Service.DOMAIN, Service.CREDENTIALS, Service.NETADDR,
    Service.USERINFO, Service.SOURCE, Service.MAILADDR, Service.ADDRNAME,
    Service.MAILADDRMAP, Service.RELAYHOST,
})


def columns(service: Service) -> int:
    """How many columns a `query_<service>` must return."""
    return COLUMNS.get(service, 1)


def describe(service: Service) -> str:
    """The expected columns in words, for the error at open."""
    return {
        Service.CREDENTIALS: "user, secret",
        Service.USERINFO: "uid, gid, home",
    }.get(service, service.value)


def _cell(value: object, column: int) -> str:
    if value is None:
        raise BackendError(f"column {column} is NULL")
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise BackendError(f"column {column} is not UTF-8 text") from None
    return str(value)


def rows_to_value(service: Service, rows: Sequence[Sequence[object]]) -> str | None:
    """The raw value for `service` from the rows a query returned; None if none."""
    if not rows:
        return None
    if service in JOINED:
        return ", ".join(_cell(row[0], 1) for row in rows)
    return ":".join(_cell(value, i) for i, value in enumerate(rows[0], 1))
