"""The backend contract: what every table backend does, and nothing more.

Modelled on OpenSMTPD's `table_backend`: each backend is one module that
describes itself (its name as written in smtpd.conf, the services it can ever
answer) and implements a few operations.  A backend deals in raw strings only;
`Table` lowercases keys before a backend sees them, parses values once per
service, applies the 10 s timeout, and maps failures to the daemon's errors.

Every operation has three outcomes: a value, "not found" (None / False), or a
raised `BackendError`.  A backend must never report "down" as "absent": that
would bounce mail during an outage.

The constructor takes the fields of a `table` declaration,
``Backend(config, *, items=(), pairs=(), is_map=False)``, does no I/O, and
raises `BackendError` if they do not suit the backend (a file table without a
path, an inline table with two keys equal after lowercasing); `open()` then
does the first load or connection.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import ClassVar, Final, Protocol

from postillion.table.errors import BackendError
from postillion.table.services import Service


class Shape(enum.Enum):
    """What a table holds, which decides how `check` works (docs/tables.md).

    LIST: elements matched one by one (domain wildcards, CIDR, patterns).
    MAP: keys with values; `check` asks whether the key exists.
    QUERY: a dynamic backend (SQL, getpwnam...) answers each key itself.
    """

    LIST = "list"
    MAP = "map"
    QUERY = "query"


# What a list can be used for: matching (check) and cyclic fetch.
LIST_SERVICES: Final = frozenset({
    Service.DOMAIN, Service.NETADDR, Service.MAILADDR, Service.STRING,
    Service.REGEX, Service.SOURCE, Service.RELAYHOST,
})
# What a map can be used for: lookups of a value, and "key exists" checks.
MAP_SERVICES: Final = frozenset({
    Service.ALIAS, Service.DOMAIN, Service.CREDENTIALS, Service.NETADDR,
    Service.USERINFO, Service.MAILADDR, Service.ADDRNAME, Service.MAILADDRMAP,
    Service.RELAYHOST, Service.STRING, Service.REGEX,
})


def shape_serves(shape: Shape | None, services: frozenset[Service], service: Service) -> bool:
    """Whether a static/file table of this shape can answer `service`.

    A table whose shape is not known yet (a file not read) is given the
    benefit of the doubt; `Table.require` is exact once the table is open.
    """
    if service not in services:
        return False
    if shape is Shape.LIST:
        return service in LIST_SERVICES
    if shape is Shape.MAP:
        return service in MAP_SERVICES
    return True


# Checks one entry of a loaded table for one service: (key, raw value) for a
# map, (None, element) for a list.  Raises `values.BadValue` saying what is
# wrong.  Built by `Table.verify`; see `Backend.validate_on_load`.
EntryCheck = Callable[[str | None, str], None]


class Backend(Protocol):
    """One table backend.  All I/O is asynchronous and off the event loop."""

    name: ClassVar[str]                     # "sqlite", as written in smtpd.conf
    services: ClassVar[frozenset[Service]]  # every service it can ever answer

    def __init__(self, config: str | None, *, items: Sequence[str] = (),
                 pairs: Sequence[tuple[str, str]] = (), is_map: bool = False) -> None: ...

    @property
    def shape(self) -> Shape | None:
        """LIST, MAP or QUERY; None while a file table is not read yet."""
        ...

    def serves(self, service: Service) -> bool:
        """Whether this instance answers `service` (exact after `open()`).

        Narrower than `services`: a list cannot give a userinfo, an SQLite
        table only the services it has a `query_<service>` for.
        """
        ...

    async def open(self) -> None:
        """First load or connection; BackendError with `file:line` if bad."""

    async def close(self) -> None:
        """Release connections and threads; later calls may fail."""

    async def update(self) -> None:
        """Reload (`update table`); on failure keep the old contents and raise."""

    async def lookup(self, service: Service, key: str) -> str | None:
        """The raw value for a lowercased key, or None if there is none."""

    async def check(self, service: Service, key: str) -> bool:
        """Whether a lowercased key exists (maps) or matches (dynamic backends).

        Not called for lists: `Table` matches their `elements()` itself.
        """

    async def fetch(self, service: Service) -> str | None:
        """The next element, cyclically (source, relayhost); None if empty."""

    async def elements(self) -> Sequence[str]:
        """A list's elements, as written, for `Table` to match (LIST only)."""

    async def entries(self) -> Sequence[tuple[str, str]]:
        """A map's (key, raw value) pairs, for `table dump` (MAP only).

        Backends that cannot list (SQL, getpwnam) raise BackendError.
        """

    async def validate_on_load(self, service: Service, check: EntryCheck) -> None:
        """Check every entry now, and every reload before it is swapped in.

        Static and file tables hold few enough entries to check them all at
        load: a malformed value is then an error for the administrator
        (BackendError naming `file:line` and the key), and a reload that
        brings one keeps the old contents.  Backends whose values are only
        seen one lookup at a time (db, SQL, getpwnam) do nothing here: there
        a malformed value is an ERROR of that lookup.
        """


class OneKeyAtATime:
    """What a backend that answers one key at a time (SQL, LDAP, Redis,
    socketmap, proc, getpwnam) says to the rest: it is no list, cannot list
    its contents, and has nothing to check at load -- its values are seen
    one lookup at a time.  `fetch` too, unless it overrides it (proc, SQL
    and Redis fetch a source).  One copy for all of them."""

    name: ClassVar[str]

    async def fetch(self, service: Service) -> str | None:
        raise BackendError(f"a {self.name} table cannot fetch")

    async def elements(self) -> Sequence[str]:
        raise BackendError(f"a {self.name} table is not a list")

    async def entries(self) -> Sequence[tuple[str, str]]:
        raise BackendError(f"a {self.name} table cannot list its contents")

    async def validate_on_load(self, service: Service, check: EntryCheck) -> None:
        return None     # values are checked one lookup at a time
