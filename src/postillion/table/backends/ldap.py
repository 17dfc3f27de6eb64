"""`ldap:/path/to/ldap.conf`: tables answered by an LDAP directory (docs/tables.md).

CONFIG is a backend-config file (`table/backend_config.py`) with the keys of
OpenSMTPD's table-ldap:

    url ldap://ldap.example.org
    username cn=mailer,dc=example,dc=org
    password secret
    basedn ou=people,dc=example,dc=org
    alias_filter (&(objectClass=nisMailAlias)(cn=%s))
    alias_attributes rfc822MailMember
    userinfo_filter (&(objectClass=posixAccount)(uid=%s))
    userinfo_attributes uidNumber, gidNumber, homeDirectory

Each service has a `<service>_filter`, in which every `%s` is replaced by
the lowercased key escaped as RFC 4515 says (`*`, `(`, `)`, `\\` and NUL
become `\\2a`...): a RCPT TO of `*)(uid=*` is searched for literally and
finds nothing.  A filter is never built from a raw key.  The search is a
subtree search under `basedn`.  Values: alias and mailaddrmap join every
value of every listed attribute of every entry with `, `; other services
take the first entry and join the first value of each listed attribute
with `:` (credentials `uid, userPassword` -> `user:secret`).

ldap3 is synchronous, so searches run in a bounded pool of threads
(`max_connections`, each with its own connection, made on first need): the
event loop only awaits them.  `connect_timeout` bounds connecting and
binding, `query_timeout` a search (both below the table's 10 s).  A server
that is down, slow or answers with an error gives `BackendError` (451 at
SMTP, a retry for a delivery); the connection that failed is dropped and the
next lookup connects again, so the table recovers by itself when the server
comes back.  An idle connection the server closed meanwhile (a restart, its
idle timeout) is replaced within the lookup that finds it closed.  `open` and `update` connect, bind and run every filter once, so
a wrong password, base DN or filter is an error naming `file:line` at start.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar, Final, TypeVar
from urllib.parse import urlsplit

import ldap3
from ldap3.core.exceptions import (
    LDAPException, LDAPSessionTerminatedByServerError, LDAPSocketSendError,
)
from ldap3.utils.conv import escape_filter_chars

from postillion.table.backend import OneKeyAtATime, Shape
from postillion.table.backend_config import BackendConfig, read_backend_config
from postillion.table.errors import BackendError
from postillion.table.services import Service

T = TypeVar("T")

# Services a `<service>_filter` may name: every lookup service, no fetch.
LDAP_SERVICES: Final = frozenset({
    Service.ALIAS, Service.DOMAIN, Service.CREDENTIALS, Service.NETADDR,
    Service.USERINFO, Service.MAILADDR, Service.ADDRNAME, Service.MAILADDRMAP,
    Service.RELAYHOST,
})
JOINED: Final = frozenset({Service.ALIAS, Service.MAILADDRMAP})
KNOWN_KEYS: Final = frozenset(
    {"url", "username", "password", "basedn", "ca_file",
     "connect_timeout", "query_timeout", "max_connections"}
    | {f"{s.value}_{part}" for s in LDAP_SERVICES for part in ("filter", "attributes")}
)
CONNECT_TIMEOUT: Final = 5       # seconds to connect and bind
QUERY_TIMEOUT: Final = 5         # seconds for one search; both < the table's 10 s
MAX_CONNECTIONS: Final = 4       # threads, each with its own connection
MAX_ENTRIES: Final = 1000        # entries one search may return
MAX_VALUE: Final = 100_000       # characters of one joined value
PROBE_KEY: Final = "postillion-probe"   # the key `open` runs every filter with
DEFAULT_PORTS: Final = {"ldap": 389, "ldaps": 636}
# How a connection the server closed while it sat idle fails.
STALE: Final = (LDAPSessionTerminatedByServerError, LDAPSocketSendError)


@dataclass(frozen=True, slots=True)
class Query:
    filter: str                     # with `%s` where the escaped key goes
    attributes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LdapSettings:
    """One config generation: where the directory is, how to ask it."""

    host: str
    port: int
    use_ssl: bool
    username: str | None
    password: str | None
    basedn: str
    ca_file: str | None
    connect_timeout: int
    query_timeout: int
    max_connections: int
    queries: dict[Service, Query]


def parse_settings(cfg: BackendConfig) -> LdapSettings:
    """Check a parsed config; BackendError naming `file:line` if it is wrong."""
    url = cfg.require("url")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (parts.scheme not in DEFAULT_PORTS or not parts.hostname or port == -1
            or parts.path not in ("", "/") or parts.query or parts.username):
        raise BackendError(f'{cfg.where("url")}: "url" wants ldap://host[:port]'
                           " or ldaps://host[:port]")
    ca_file = cfg.resolve_path("ca_file") if cfg.get("ca_file") is not None else None
    if ca_file is not None and parts.scheme != "ldaps":
        raise BackendError(f'{cfg.where("ca_file")}: "ca_file" needs an ldaps:// url')
    if (cfg.get("username") is None) != (cfg.get("password") is None):
        key = "password" if cfg.get("username") is not None else "username"
        raise BackendError(f'{cfg.path}: missing "{key}" (username and password go together)')
    queries: dict[Service, Query] = {}
    for service in sorted(LDAP_SERVICES, key=lambda s: s.value):
        fkey, akey = f"{service.value}_filter", f"{service.value}_attributes"
        template, attrs = cfg.get(fkey), cfg.get(akey)
        if template is None and attrs is None:
            continue
        if template is None or attrs is None:
            missing, other = (fkey, akey) if template is None else (akey, fkey)
            raise BackendError(f'{cfg.where(other)}: "{other}" without "{missing}"')
        if "%s" not in template:
            raise BackendError(f'{cfg.where(fkey)}: "{fkey}" has no %s (where the key goes)')
        names = tuple(a.strip() for a in attrs.split(","))
        if not all(names):
            raise BackendError(f'{cfg.where(akey)}: "{akey}" has an empty attribute name')
        queries[service] = Query(template, names)
    if not queries:
        raise BackendError(f"{cfg.path}: no <service>_filter given")
    return LdapSettings(
        host=parts.hostname, port=port or DEFAULT_PORTS[parts.scheme],
        use_ssl=parts.scheme == "ldaps", username=cfg.get("username"),
        password=cfg.get("password"), basedn=cfg.require("basedn"), ca_file=ca_file,
        connect_timeout=cfg.integer("connect_timeout", CONNECT_TIMEOUT, minimum=1),
        query_timeout=cfg.integer("query_timeout", QUERY_TIMEOUT, minimum=1),
        max_connections=cfg.integer("max_connections", MAX_CONNECTIONS, minimum=1),
        queries=queries)


def searchable(key: str) -> bool:
    """Whether a key can be searched for as it is.

    LDAP's string matching (RFC 4518) maps control characters to spaces and
    ignores leading, trailing and repeated spaces: searched for, `alice\\n`
    or ` alice` would find alice.  No such key names anything in a mail
    directory, so they find nothing, as do empty keys (an LDAP value is
    never empty) and keys that are not text.
    """
    if not key or key != key.strip() or "  " in key:
        return False
    if any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 or (c.isspace() and c != " ") for c in key):
        return False
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def search_filter(template: str, key: str) -> str:
    """The filter for one key: every `%s` becomes the RFC 4515-escaped key."""
    return template.replace("%s", escape_filter_chars(key))


def _text(value: bytes, attribute: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise BackendError(f"attribute {attribute} is not UTF-8 text") from None


def entries_to_value(service: Service, attributes: tuple[str, ...],
                     entries: Sequence[dict[str, list[bytes]]]) -> str | None:
    """The raw value for `service` from the entries a search returned."""
    if not entries:
        return None
    if service in JOINED:
        values = [_text(v, a) for entry in entries for a in attributes
                  for v in entry.get(a.lower(), ())]
        return ", ".join(values) if values else None
    fields = []
    for a in attributes:
        values = entries[0].get(a.lower())
        if not values:
            raise BackendError(f"entry has no attribute {a}")
        fields.append(_text(values[0], a))
    return ":".join(fields)


def _drop(conn: ldap3.Connection) -> None:
    """Close a connection that failed or is no longer wanted, quietly."""
    try:
        conn.unbind()
    except (LDAPException, OSError):    # a dead socket: nothing left to close
        return


class _Directory:
    """One generation: settings, a thread pool and the idle connections."""

    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        self.cfg: BackendConfig | None = None
        self.settings: LdapSettings | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.idle: list[ldap3.Connection] = []
        self.lock = threading.Lock()
        self.closed = False

    # ---- in a pool thread

    def _connect(self) -> ldap3.Connection:
        s = self.settings
        assert s is not None
        tls = None
        if s.use_ssl:
            tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=s.ca_file)
        server = ldap3.Server(s.host, port=s.port, use_ssl=s.use_ssl, tls=tls,
                              get_info=ldap3.NONE, connect_timeout=s.connect_timeout)
        conn = ldap3.Connection(server, user=s.username, password=s.password,
                                receive_timeout=s.connect_timeout, read_only=True,
                                auto_referrals=False, raise_exceptions=False)
        try:
            conn.open()
            if not conn.bind():
                who = s.username or "anonymous"
                raise BackendError(f"bind as {who} refused: {conn.result.get('description')}")
        except (LDAPException, OSError) as e:
            _drop(conn)
            raise BackendError(f"ldap://{s.host}:{s.port}: {type(e).__name__}: {e}") from None
        except BackendError:
            _drop(conn)
            raise
        # Searches from now on: ldap3 set the socket's timeout when it connected.
        conn.receive_timeout = s.query_timeout
        conn.socket.settimeout(s.query_timeout)
        return conn

    def _take(self) -> tuple[ldap3.Connection, bool]:
        """A connection, and whether it is a reused one (which may be stale)."""
        with self.lock:
            if self.idle:
                return self.idle.pop(), True
        return self._connect(), False

    def _give_back(self, conn: ldap3.Connection) -> None:
        with self.lock:
            if not self.closed:
                self.idle.append(conn)
                return
        _drop(conn)

    def search(self, service: Service, key: str) -> str | None:
        s = self.settings
        assert s is not None
        query = s.queries[service]
        conn, reused = self._take()
        while True:
            try:
                ok = conn.search(s.basedn, search_filter(query.filter, key), ldap3.SUBTREE,
                                 attributes=list(query.attributes), size_limit=MAX_ENTRIES,
                                 time_limit=s.query_timeout)
                break
            except STALE as e:
                # An idle connection the server closed (a restart, its idle
                # timeout): this lookup tries once more on a new one.
                _drop(conn)
                if not reused:
                    raise BackendError(f"{service.value}_filter: {type(e).__name__}: {e}") \
                        from None
                conn, reused = self._connect(), False
            except (LDAPException, OSError) as e:
                _drop(conn)         # the next lookup connects again
                raise BackendError(f"{service.value}_filter: {type(e).__name__}: {e}") from None
        result = conn.result or {}
        if not ok and result.get("result") != 0:
            # noSuchObject (a wrong basedn), sizeLimitExceeded, busy, a lost
            # connection...: a failure, never "not found"
            _drop(conn)
            raise BackendError(f"{service.value}_filter: search failed:"
                               f" {result.get('description')} ({result.get('result')})")
        entries = [{k.lower(): v for k, v in item["raw_attributes"].items()}
                   for item in conn.response or () if item.get("type") == "searchResEntry"]
        self._give_back(conn)
        value = entries_to_value(service, query.attributes, entries)
        if value is not None and len(value) > MAX_VALUE:
            raise BackendError(f"value longer than {MAX_VALUE} characters")
        return value

    def setup(self) -> None:
        """Connect, bind and run every filter once, before any mail needs it."""
        s = self.settings
        assert s is not None and self.cfg is not None
        try:
            conn = self._connect()
        except BackendError as e:
            raise BackendError(f"{self.cfg.where('url')}: {e}") from None
        self._give_back(conn)
        for service in s.queries:
            try:
                self.search(service, PROBE_KEY)
            except BackendError as e:
                raise BackendError(f"{self.cfg.where(f'{service.value}_filter')}: {e}") from None

    def drain(self) -> None:
        with self.lock:
            self.closed = True
            idle, self.idle = self.idle, []
        for conn in idle:
            _drop(conn)

    # ---- from the event loop

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        assert self.executor is not None
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def start(self) -> None:
        self.cfg = await asyncio.to_thread(read_backend_config, self.config_path, KNOWN_KEYS)
        self.settings = parse_settings(self.cfg)
        self.executor = ThreadPoolExecutor(self.settings.max_connections,
                                           thread_name_prefix="postillion-ldap")
        try:
            await self.run(self.setup)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Close idle connections; lookups in flight finish on their own."""
        executor, self.executor = self.executor, None
        if executor is not None:
            executor.submit(self.drain)
            executor.shutdown(wait=False, cancel_futures=False)


class LdapBackend(OneKeyAtATime):
    name: ClassVar[str] = "ldap"
    services: ClassVar[frozenset[Service]] = LDAP_SERVICES

    def __init__(self, config: str | None, *, items: Sequence[str] = (),
                 pairs: Sequence[tuple[str, str]] = (), is_map: bool = False) -> None:
        if not config or items or pairs:
            raise BackendError("an ldap table needs a backend-config file: ldap:/path/ldap.conf")
        self.config_path = config
        self._dir: _Directory | None = None

    @property
    def shape(self) -> Shape:
        return Shape.QUERY

    def serves(self, service: Service) -> bool:
        if self._dir is None or self._dir.settings is None:
            return service in self.services
        return service in self._dir.settings.queries

    async def open(self) -> None:
        d = _Directory(self.config_path)
        await d.start()
        self._dir = d

    async def update(self) -> None:
        d = _Directory(self.config_path)
        await d.start()
        old, self._dir = self._dir, d
        if old is not None:
            old.stop()

    async def close(self) -> None:
        d, self._dir = self._dir, None
        if d is not None:
            d.stop()

    async def lookup(self, service: Service, key: str) -> str | None:
        d = self._dir
        if d is None or d.settings is None:
            raise BackendError("table not open")
        if service not in d.settings.queries:
            raise BackendError(f"no {service.value}_filter in {self.config_path}")
        if not searchable(key):
            return None
        return await d.run(d.search, service, key)

    async def check(self, service: Service, key: str) -> bool:
        return await self.lookup(service, key) is not None


