"""`Table`: the one door every lookup of the daemon goes through.

Rules, recipient expansion, AUTH and relaying never talk to a backend: they
ask a `Table`, which

* lowercases keys before a backend sees them (docs/tables.md);
* parses the backend's raw string once, into the service's typed value;
* matches list elements itself (domain wildcards, CIDR, address patterns,
  docs/tables.md);
* bounds every call by `LOOKUP_TIMEOUT` (10 s), and turns any failure (a
  backend down, slow, or answering a malformed value) into
  `LookupUnavailable` (451 4.3.0 in SMTP, a retry for queued mail) after
  logging a warning that names table, service and key.  None / False is
  "not found" and nothing else: an outage never bounces mail.

`open_table` builds one from a `table` declaration's fields; config-time
problems (unknown backend, unfit service, a file that does not parse) are
`TableError`s with a message for the administrator.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Literal, TypeVar, overload

from postillion import metrics
from postillion.errors import LookupUnavailable
from postillion.table.backend import Backend, EntryCheck, Shape
from postillion.table.errors import BackendError, MalformedValue, TableError, printable
from postillion.table.match import CompiledList, InvalidElement, compile_element
from postillion.table.registry import resolve
from postillion.table.services import Service
from postillion.table.textformat import entry_problem
from postillion.table.values import (
    Addrname, BadValue, Credentials, Domain, ExpandList, Mailaddr, Mailaddrmap, Netaddr,
    Relayhost, Source, String, Userinfo, Value, parse_value,
)

T = TypeVar("T")

LOOKUP_TIMEOUT: Final = 10.0    # seconds; docs/tables.md, Lookups and their outcomes

# Services whose value a map lookup hands to the daemon.  A map used for the
# others (domain, netaddr, mailaddr, string, regex) is matched by "key
# exists" (docs/tables.md): its values are never read, so never checked.
VALUE_SERVICES: Final = frozenset({
    Service.ALIAS, Service.CREDENTIALS, Service.USERINFO, Service.ADDRNAME,
    Service.MAILADDRMAP, Service.RELAYHOST,
})

log = logging.getLogger("postillion.table")


def fold_key(service: Service, key: str) -> str:
    """The key as a backend sees it: lowercased (docs/tables.md).

    An `auth` key is `user:cleartext`; only the user part is folded, or no
    password with a capital letter would ever match.
    """
    if service is Service.AUTH:
        user, sep, secret = key.partition(":")
        return user.lower() + sep + secret
    return key.lower()


class Table:
    """One named table over one backend; see the module docstring."""

    def __init__(self, name: str, backend: Backend, *, timeout: float = LOOKUP_TIMEOUT,
                 sub_addr_delim: str = "+") -> None:
        self.name = name
        self.backend = backend
        self.timeout = timeout
        self.sub_addr_delim = sub_addr_delim
        self._compiled: dict[Service, CompiledList] = {}
        # The histogram child for our backend, found once (docs/metrics.md).
        self._latency = metrics.TABLE_LOOKUP_SECONDS.labels(backend.name)

    def __repr__(self) -> str:
        return f"<Table {self.name} ({self.backend.name})>"

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def shape(self) -> Shape | None:
        return self.backend.shape

    # ------------------------------------------------------------ config time

    def serves(self, service: Service) -> bool:
        """Whether this table can answer `service`; exact once opened."""
        return self.backend.serves(service)

    def require(self, service: Service) -> None:
        """Raise TableError unless this table can serve `service`.

        For config load: a list used as a userbase, an SQLite table without
        `query_userinfo`, are refused before the daemon starts.
        """
        if not self.serves(service):
            shape = self.shape
            kind = f" is a {shape.value} and" if shape in (Shape.LIST, Shape.MAP) else ""
            raise TableError(f"table {self.name} (backend {self.backend.name}){kind}"
                             f" cannot serve service {service.value}")

    async def open(self) -> None:
        """First load: read the file, connect and check the queries.

        Raises TableError naming table, backend and, where it applies,
        `file:line`: `table users: sqlite: /x/sqlite.conf:3: unknown key "dbpth"`.
        """
        try:
            async with asyncio.timeout(self.timeout):
                await self.backend.open()
        except BackendError as e:
            raise TableError(f"table {self.name}: {self.backend.name}: {e}") from None
        except TimeoutError:
            raise TableError(f"table {self.name}: {self.backend.name}: open timed out"
                             f" after {self.timeout:g} s") from None

    async def update(self) -> None:
        """Reload (`update table NAME`), swapping contents in one step.

        On failure the old contents keep serving and TableError says why.
        """
        try:
            async with asyncio.timeout(self.timeout):
                await self.backend.update()
        except BackendError as e:
            raise TableError(f"table {self.name}: {self.backend.name}: {e}") from None
        except TimeoutError:
            raise TableError(f"table {self.name}: {self.backend.name}: update timed out"
                             f" after {self.timeout:g} s") from None

    async def close(self) -> None:
        await self.backend.close()

    async def verify(self, service: Service) -> None:
        """Refuse, at config load, a table that cannot serve `service` well.

        `require(service)`, then, for static and file tables, parse every
        entry for `service` now: a list holding `10.0.0.0/33` used by `from
        src`, a userbase line `bob: 1000:/home/bob`, an alias target `|` are
        TableErrors naming the table, `file:line`, the key (never the value)
        and what is wrong -- not a 451 at the first message.  From then on
        a reload of the file is checked for `service` before it is swapped
        in, so a bad edit keeps the old contents.  Other backends check
        values one lookup at a time (an ERROR, 451 4.3.0).
        """
        self.require(service)
        try:
            await self.backend.validate_on_load(service, self.entry_check(service))
        except BackendError as e:
            raise TableError(f"table {self.name}: {self.backend.name}: {e}") from None

    def entry_check(self, service: Service) -> EntryCheck:
        """How one entry of a static/file/db table is checked for `service`."""
        delim = self.sub_addr_delim

        def check(key: str | None, raw: str) -> None:
            if key is None:
                try:
                    compile_element(service, raw, delim)
                except BadValue as bad:
                    raise BadValue(f"not a valid {service.value}: {bad}") from None
            elif service in VALUE_SERVICES:
                try:
                    parse_value(service, key, raw)
                except MalformedValue as e:
                    raise BadValue(f"malformed {service.value} value: {e.reason}") from None
        return check

    async def dump(self, service: Service) -> list[tuple[str | None, Value]]:
        """Every entry as (key, typed value); (None, element) for a list.

        For `postillion table dump`.  Raises TableError if the backend cannot
        list (SQL, getpwnam) or an entry is malformed for `service`.
        """
        self.require(service)
        try:
            if self.shape is Shape.LIST:
                elements = await self.backend.elements()
                pairs: Sequence[tuple[str | None, str]] = [(None, e) for e in elements]
            else:
                pairs = await self.backend.entries()
        except BackendError as e:
            raise TableError(f"table {self.name}: {self.backend.name}: {e}") from None
        out: list[tuple[str | None, Value]] = []
        check = self.entry_check(service)
        for index, (key, raw) in enumerate(pairs, 1):
            try:
                check(key, raw)
            except BadValue as bad:
                raise TableError(f"table {self.name}: {entry_problem(key, index, raw, bad)}") from None
            if key is not None and service not in VALUE_SERVICES:
                out.append((key, String(raw)))      # a match-only map: values as written
            else:
                out.append((key, parse_value(service, key or "", raw, table=self.name)))
        return out

    # ------------------------------------------------------------- mail time

    @overload
    async def lookup(self, service: Literal[Service.ALIAS], key: str) -> ExpandList | None: ...
    @overload
    async def lookup(self, service: Literal[Service.DOMAIN], key: str) -> Domain | None: ...
    @overload
    async def lookup(self, service: Literal[Service.CREDENTIALS], key: str) -> Credentials | None: ...
    @overload
    async def lookup(self, service: Literal[Service.NETADDR], key: str) -> Netaddr | None: ...
    @overload
    async def lookup(self, service: Literal[Service.USERINFO], key: str) -> Userinfo | None: ...
    @overload
    async def lookup(self, service: Literal[Service.MAILADDR], key: str) -> Mailaddr | None: ...
    @overload
    async def lookup(self, service: Literal[Service.ADDRNAME], key: str) -> Addrname | None: ...
    @overload
    async def lookup(self, service: Literal[Service.MAILADDRMAP], key: str) -> Mailaddrmap | None: ...
    @overload
    async def lookup(self, service: Literal[Service.RELAYHOST], key: str) -> Relayhost | None: ...
    @overload
    async def lookup(self, service: Service, key: str) -> Value | None: ...

    async def lookup(self, service: Service, key: str) -> Value | None:
        """The typed value for `key`, or None if there is none (NOT_FOUND).

        On a list, the first element matching the key.  Raises
        LookupUnavailable (ERROR), TableError if the table cannot serve
        `service` at all (a bug: `require` it at config load).
        """
        self._check_serves(service)
        folded = fold_key(service, key)
        if self.shape is Shape.LIST:
            raw = await self._match(service, key, "lookup")
            if raw is None:
                return None
        else:
            raw = await self._call("lookup", service, key,
                                   lambda: self.backend.lookup(service, folded))
            if raw is None:
                log.debug("table %s lookup %s %r: not found", self.name, service.value, folded)
                return None
        log.debug("table %s lookup %s %r: found", self.name, service.value, folded)
        return self._parse("lookup", service, folded, raw)

    async def check(self, service: Service, key: str) -> bool:
        """Whether `key` matches (list) or exists (map, dynamic backend).

        Raises LookupUnavailable (ERROR); False is "no match".
        """
        self._check_serves(service)
        if self.shape is Shape.LIST:
            return await self._match(service, key, "check") is not None
        folded = fold_key(service, key)
        return await self._call("check", service, key,
                                lambda: self.backend.check(service, folded))

    @overload
    async def fetch(self, service: Literal[Service.SOURCE]) -> Source | None: ...
    @overload
    async def fetch(self, service: Literal[Service.RELAYHOST]) -> Relayhost | None: ...
    @overload
    async def fetch(self, service: Service) -> Value | None: ...

    async def fetch(self, service: Service) -> Value | None:
        """The next element, cyclically (relay `src`, `host <t>`); None if empty."""
        self._check_serves(service)
        raw = await self._call("fetch", service, "", lambda: self.backend.fetch(service))
        if raw is None:
            return None
        return self._parse("fetch", service, "", raw)

    # ---------------------------------------------------------------- inside

    def _check_serves(self, service: Service) -> None:
        if not self.serves(service):
            self.require(service)

    async def _call(self, op: str, service: Service, key: str,
                    call: Callable[[], Awaitable[T]]) -> T:
        """Run one backend call under the timeout; every failure -> ERROR.
        Every call is timed here, the one place all of them pass."""
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                return await call()
        except TimeoutError:
            reason = f"timed out after {self.timeout:g} s"
        except BackendError as e:
            reason = str(e)
        except Exception as e:      # a backend bug must not take the session down
            log.error("table %s: unexpected error in %s", self.name, self.backend.name,
                      exc_info=True)
            reason = f"{type(e).__name__}: {e}"
        finally:
            self._latency.observe(time.perf_counter() - start)
        raise self._unavailable(op, service, key, reason)

    def _unavailable(self, op: str, service: Service, key: str, reason: str) -> LookupUnavailable:
        log.warning("table %s failed: table=%s backend=%s service=%s key=%s reason=%s",
                    op, self.name, self.backend.name, service.value,
                    printable(key, service), printable(reason, limit=500))
        return LookupUnavailable(f"table {self.name}: {service.value} {op} for key"
                                 f" {printable(key, service)}: {reason}")

    def _parse(self, op: str, service: Service, key: str, raw: str) -> Value:
        try:
            return parse_value(service, key, raw, table=self.name)
        except MalformedValue as e:
            raise self._unavailable(op, service, key, f"malformed value: {e.reason}") from None

    async def _matchers(self, service: Service) -> CompiledList:
        """The list compiled for `service`, cached per contents (one object per load)."""
        elements = await self.backend.elements()
        cached = self._compiled.get(service)
        if cached is not None and cached.elements is elements:
            return cached
        try:
            compiled = CompiledList(service, elements, self.sub_addr_delim)
        except InvalidElement as e:
            raise BackendError(f"list element {e.number} {printable(e.element)} is not a"
                               f" valid {service.value}: {e}") from None
        self._compiled[service] = compiled
        return compiled

    async def _match(self, service: Service, key: str, op: str) -> str | None:
        """The first list element matching `key`, as written, or None."""
        compiled = await self._call(op, service, key, lambda: self._matchers(service))
        return compiled.first(key)


def open_table(name: str, backend: str, config: str | None, *,
               items: Sequence[str] = (), pairs: Sequence[tuple[str, str]] = (),
               is_map: bool = False, timeout: float = LOOKUP_TIMEOUT,
               sub_addr_delim: str = "+") -> Table:
    """Build (not open) the table a `table` declaration describes.

    The daemon passes a config `TableDecl`'s fields; `await table.open()`
    then loads it.  Raises TableError for an unknown backend or fields that
    do not suit it (two inline keys equal after lowercasing, a file table
    without a path).
    """
    cls, config = resolve(name, backend, config)
    try:
        instance = cls(config, items=items, pairs=pairs, is_map=is_map)
    except BackendError as e:
        raise TableError(f"table {name}: {cls.name}: {e}") from None
    set_name = getattr(instance, "set_table_name", None)
    if set_name is not None:        # a proc helper is told the table's name
        set_name(name)
    return Table(name, instance, timeout=timeout, sub_addr_delim=sub_addr_delim)
