"""The mta agent: relays envelopes for the scheduler, one `relay()` call each.

Envelopes are sorted by relay (`mta/relay.py`: the recipient domain or the
smarthost, and how to reach it); each relay has a `Connector` that holds
its waiting envelopes, finds its hosts (DNS, `mta/dns.py`) and sources (the
`src` table), asks its `RouteTable` (`mta/routes.py`) which route the next
session may take, and runs the sessions (`mta/session.py`).  A session
takes the envelopes of one message together (one MAIL, a RCPT each), then
the next message of the relay, up to `session-mail-max`.

Errors land where they belong: a connect, TLS, greeting or EHLO failure
counts against its route and the envelopes go back to wait for another
route; when the relay has no usable route left, or its DNS answer is a
failure, its waiting envelopes fail with that (temporarily, or permanently
for a domain that does not exist or accepts no mail).  A recipient's reply
decides that recipient only.  Each outcome is logged as an `mta delivery`
line (docs/logs.md) and returned to the scheduler, which retries, bounces or
removes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO, Final

from postillion import log, metrics
from postillion.config.lexer import Kind, Token
from postillion.config.model import ActionDecl, Config, Position, RelayHost
from postillion.config.relay import parse_url
from postillion.config.stream import Syntax
from postillion.errors import LookupUnavailable, MailError, PermFail, Reply, TempFail
from postillion.mta._events import ClientLimits, Outcome, Recipient, Transaction
from postillion.mta.dns import MxResolver, address_literal
from postillion.mta.limits import MtaLimits, limits_for
from postillion.mta.relay import Relay, relay_for
from postillion.mta.routes import ErrorKind, MtaState, Route, RouteTable, Wait, helo_name
from postillion.mta._stream import client_cert_contexts, system_context
from postillion.mta.session import ClientConfig, Phase, RouteError, open_session
from postillion.queue.envelope import Envelope
from postillion.table.services import Service
from postillion.table.table import Table

logger = logging.getLogger("postillion.mta")

#: Most recipients of one message sent in one transaction (RFC 5321 §4.5.3.1.8
#: says a server takes at least 100); more go in a further transaction.
MAX_RCPT: Final = 100
#: Longest a connector waits before asking its route table again when it
#: has envelopes but no route (a session closing wakes it sooner).
MAX_WAIT: Final = 5.0
#: A relay's connector with nothing waiting and no session for this long is
#: dropped, so memory follows the relays in use, not every domain ever
#: relayed to.  Its delays (seconds) are long over by then; the health of
#: its routes is kept apart, in MtaState, which forgets on its own.
CONNECTOR_IDLE: Final = 600.0
#: Idle connectors are looked for at most this often (on a relay() call).
CONNECTOR_PRUNE_EVERY: Final = 60.0
NO_ACTION: Final = Reply(451, "4.3.0", "No such relay action in the configuration")


@dataclass(eq=False)
class _Job:
    envelope: Envelope
    message: BinaryIO
    done: asyncio.Future[None]
    queued: float = field(default_factory=time.monotonic)


def relay_tables(config: Config) -> set[str]:
    """The tables the relay actions use: what the mta process opens."""
    names: set[str] = set()
    for action in config.actions.values():
        if action.method != "relay":
            continue
        for name in (action.auth, action.src, action.helo_src, action.host_table, action.domain):
            if name is not None:
                names.add(name)
    return names


class ClientCertError(Exception):
    """A relay's `pki` does not load; the message names the pki and files."""


def client_contexts(config: Config) -> dict[tuple[str | None, str], tuple[ssl.SSLContext, ssl.SSLContext]]:
    """The TLS client contexts of every relay action with a `pki` (a client
    certificate, as OpenSMTPD's `relay ... pki NAME`), by (ca, pki).
    ClientCertError when a pair does not load: `run` and `check` refuse."""
    out: dict[tuple[str | None, str], tuple[ssl.SSLContext, ssl.SSLContext]] = {}
    for action in config.actions.values():
        if action.method != "relay" or action.pki is None or (action.ca, action.pki) in out:
            continue
        pki = config.pkis[action.pki]
        if not pki.cert or not pki.key:
            raise ClientCertError(f"{pki.pos}: pki {pki.name}: needs both cert and key "
                                  f"(relay action {action.name})")
        ca_file = config.cas[action.ca].cert if action.ca is not None else None
        try:
            out[(action.ca, action.pki)] = client_cert_contexts(ca_file, pki.cert, pki.key)
        except (ssl.SSLError, OSError) as e:
            raise ClientCertError(f"{pki.pos}: pki {pki.name}: cannot load {pki.cert} / {pki.key} as a "
                                  f"client certificate: {getattr(e, 'strerror', None) or e}") from None
    return out


class MtaAgent:
    """`relay(envelope, message)`: returns once relayed, raises TempFail or
    PermFail otherwise.  `message` is the queue's message file, open for
    reading; it stays the caller's."""

    def __init__(self, config: Config, tables: Mapping[str, Table], *,
                 resolver: MxResolver | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 client_limits: ClientLimits | None = None) -> None:
        self.config = config
        self.tables = tables
        self.resolver = resolver if resolver is not None else make_resolver(config)
        self.state = MtaState(clock)
        self.clock = clock
        self.client_limits = client_limits
        self.connectors: dict[Relay, Connector] = {}
        self._next_prune = clock() + CONNECTOR_PRUNE_EVERY
        #: The relays' `ca` bundles, loaded now: the mta process builds its
        #: agent as root, and a CA file may be readable by root only.
        self.ca_contexts: dict[str, ssl.SSLContext] = {
            name: system_context(config.cas[name].cert)
            for name in sorted({a.ca for a in config.actions.values()
                                if a.method == "relay" and a.ca is not None})}
        #: Relays with a client certificate (`pki`), by (ca, pki): their
        #: verifying and opportunistic contexts, loaded now for the same
        #: reason (a key is readable by root only).
        self.cert_contexts = client_contexts(config)

    async def relay(self, envelope: Envelope, message: BinaryIO) -> None:
        action = self.config.actions.get(envelope.dispatcher)
        if action is None or action.method != "relay":
            raise TempFail(NO_ACTION, f"no relay action {envelope.dispatcher!r}")
        domain = envelope.dest.rpartition("@")[2]
        relay = relay_for(action, domain, relayhost=await smarthost(self.tables, action, domain),
                          hostname=self.config.hostname)
        self._prune()
        connector = self.connectors.get(relay)
        if connector is None:
            connector = self.connectors[relay] = Connector(self, relay, action)
        job = _Job(envelope, message, asyncio.get_running_loop().create_future())
        connector.submit(job)
        await job.done

    def _prune(self) -> None:
        """Drop the connectors idle for CONNECTOR_IDLE (at most every
        CONNECTOR_PRUNE_EVERY seconds: the walk costs one look per relay)."""
        now = self.clock()
        if now < self._next_prune:
            return
        self._next_prune = now + CONNECTOR_PRUNE_EVERY
        for relay, connector in list(self.connectors.items()):
            if connector.idle and now - connector.last_used >= CONNECTOR_IDLE:
                del self.connectors[relay]

    async def stop(self) -> None:
        """End the sessions still open (the tables are the caller's)."""
        for connector in list(self.connectors.values()):
            await connector.stop()


def make_resolver(config: Config) -> MxResolver:
    """The MTA's resolver: `mta nameserver` when given, else the system's."""
    return MxResolver(list(config.mta.nameservers) or None)


async def smarthost(tables: Mapping[str, Table], action: ActionDecl,
                    domain: str) -> RelayHost | None:
    """`host <t>` (a smarthost fetched in turn) or `domain <t>` (one per
    recipient domain): the relay URL, parsed as `relay host` would; None
    when the action names no such table."""
    if action.host_table is None and action.domain is None:
        return None
    if action.host_table is not None:
        value = await tables[action.host_table].fetch(Service.RELAYHOST)
    else:
        assert action.domain is not None
        value = await tables[action.domain].lookup(Service.RELAYHOST, domain.lower())
    if value is None:
        raise TempFail(Reply(451, "4.3.0", "No relay host for this domain"),
                       f"no relayhost for {domain} in the action's table")
    try:
        return parse_relay_url(value.url)
    except ValueError as e:
        raise LookupUnavailable(f"relayhost {value.url!r}: {e}") from None


async def relay_hosts(resolver: MxResolver, relay: Relay) -> list[tuple[int, str, tuple[str, ...]]]:
    """A relay's hosts as (preference, name, addresses), best first: the
    smarthost's addresses, or the domain's MX hosts (only those better
    than ours when `backup`).  Raises TempFail / PermFail (mta/dns.py)."""
    if relay.as_host:
        addresses = await resolver.addresses(relay.domain)
        return [(0, _host_name(relay.domain), tuple(addresses))]
    hosts = await resolver.mx(relay.domain, backup=relay.backup)
    return [(h.preference, h.name, h.addresses) for h in hosts]


async def relay_sources(tables: Mapping[str, Table], relay: Relay) -> list[str]:
    """The source addresses of a relay with a `src` table (none without);
    LookupUnavailable when the table is empty."""
    if relay.src is None:
        return []
    entries = await tables[relay.src].dump(Service.SOURCE)
    sources = [str(value.address) for _, value in entries]  # type: ignore[attr-defined]
    if not sources:
        raise LookupUnavailable(f"src table {relay.src!r} is empty")
    return sources


def parse_relay_url(url: str) -> RelayHost:
    """A relay URL from a table, checked as the config parser checks
    `relay host URL` (the one parser of relay URLs)."""
    try:
        relay, _ = parse_url(Token(Kind.STRING, url, Position("<table>", 1, 1)))
    except Syntax as e:
        raise ValueError(e.message) from None
    return relay


class Connector:
    """One relay: its waiting envelopes, its routes and its sessions."""

    def __init__(self, agent: MtaAgent, relay: Relay, action: ActionDecl) -> None:
        self.agent = agent
        self.relay = relay
        self.action = action
        self.limits: MtaLimits = limits_for(agent.config.mta,
                                            None if relay.as_host else relay.domain)
        self.routes = RouteTable(relay, self.limits, agent.state)
        self.pending: deque[_Job] = deque()
        self.sessions: set[asyncio.Task[None]] = set()
        self.wake = asyncio.Event()
        self.runner: asyncio.Task[None] | None = None
        self.last_used = agent.clock()      # an envelope came or a session ended

    @property
    def idle(self) -> bool:
        """Nothing waiting, no session, no runner: the connector may go."""
        return not self.pending and not self.sessions and \
            (self.runner is None or self.runner.done())

    def submit(self, job: _Job) -> None:
        self.last_used = self.agent.clock()
        self.pending.append(job)
        self.wake.set()
        if self.runner is None or self.runner.done():
            # Started on the next turn: the scheduler hands every envelope of
            # a message over in one turn, so they share one transaction.
            self.runner = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        tasks = [t for t in (self.runner, *self.sessions) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._fail_all(TempFail(Reply(451, "4.3.0", "Relaying stopped"), "mta stopping"))

    # -- opening sessions -------------------------------------------------------

    async def _run(self) -> None:
        await asyncio.sleep(0)
        while self.pending:
            try:
                await self._refresh()
            except MailError as e:
                logger.info("mta relay %s: %s", self.relay, e.reason)
                self._fail_all(e)
                return
            choice = self.routes.choose()
            if isinstance(choice, Wait):
                if choice.error is not None:
                    self._fail_all(choice.error)
                    return
                self.wake.clear()
                delay = MAX_WAIT if choice.until is None else \
                    max(0.0, min(MAX_WAIT, choice.until - self.agent.clock()))
                try:
                    await asyncio.wait_for(self.wake.wait(), delay)
                except TimeoutError:
                    pass
                continue
            group = self._claim()
            if not group:
                break
            self.routes.session_opened(choice)
            logger.debug("mta session relay=%s route=%s envelopes=%d", self.relay, choice, len(group))
            task = asyncio.get_running_loop().create_task(self._session(choice, group))
            self.sessions.add(task)
            task.add_done_callback(self.sessions.discard)
            await asyncio.sleep(0)

    async def _refresh(self) -> None:
        """Hosts from DNS (the resolver caches), sources from the `src` table."""
        self.routes.set_hosts(await relay_hosts(self.agent.resolver, self.relay))
        if self.relay.src is not None:
            self.routes.set_sources(await relay_sources(self.agent.tables, self.relay))

    def _claim(self) -> list[_Job]:
        """The next message's envelopes (one transaction), oldest first."""
        if not self.pending:
            return []
        first = self.pending.popleft()
        group, rest = [first], deque()
        while self.pending:
            job = self.pending.popleft()
            if job.envelope.msgid == first.envelope.msgid and \
                    job.envelope.sender == first.envelope.sender and len(group) < MAX_RCPT:
                group.append(job)
            else:
                rest.append(job)
        self.pending = rest
        return [j for j in group if not j.done.done()]

    def _fail_all(self, error: MailError) -> None:
        """Every waiting envelope ends with `error` (a DNS answer, no route),
        each logged as its delivery."""
        pending, self.pending = self.pending, deque()
        sid = log.new_id()
        result = "PermFail" if isinstance(error, PermFail) else "TempFail"
        for job in pending:
            if not job.done.done():
                self._log_delivery(sid, job, None, result, str(error.reply))
            self._finish(job, error)

    def _fail_group(self, sid: str, group: list[_Job], route: Route, error: TempFail) -> None:
        """The envelopes of a session that could not start fail with `error`."""
        for job in group:
            if not job.done.done():
                self._log_delivery(sid, job, route, "TempFail", str(error.reply))
            self._finish(job, error)

    @staticmethod
    def _finish(job: _Job, error: MailError | None) -> None:
        if job.done.done():
            return
        if error is None:
            job.done.set_result(None)
        else:
            job.done.set_exception(error)

    # -- one session ------------------------------------------------------------

    async def _session(self, route: Route, group: list[_Job]) -> None:
        sid = log.new_id()
        messages = 0
        try:
            try:
                config = await self._client_config(route)
            except MailError as e:
                # No credentials for the label, a table down: every session
                # of this relay would meet the same, so all its waiting
                # envelopes fail now (the queue retries them), not one
                # message per session.
                error = e if isinstance(e, TempFail) else TempFail(e.reply, e.reason)
                self._fail_group(sid, group, route, error)
                self._fail_all(error)
                return
            log.event(sid, "mta", "connecting",
                      address=f"{self.relay.scheme}://{_hostport(route, self.relay)}",
                      host=route.host.name or route.host.address)
            try:
                session = await open_session(config)
            except RouteError as e:
                metrics.ROUTE_ERRORS.labels(e.phase.value).inc()
                kind = ErrorKind.SMTP if e.phase in (Phase.GREETING, Phase.HELLO) else ErrorKind.NETWORK
                log.event(sid, "mta", "error", reason=e.reason)
                if e.phase is Phase.AUTH:
                    # Our credentials, not the route: the relay's envelopes
                    # wait for a fix.  All of them, now: the next session
                    # would present the same credentials, and a smarthost
                    # that sees one refused AUTH per queued message may ban
                    # us (fail2ban counts them).
                    self.routes.route_ok(route)
                    self._fail_group(sid, group, route, e)
                    self._fail_all(e)
                    return
                disabled = self.routes.route_error(route, e.reason, kind)
                logger.debug("mta route-error route=%s reason=%s disabled=%s", route, e.reason,
                             f"{disabled:.0f}s" if disabled is not None else "no")
                self.pending.extendleft(reversed(group))      # another route may do
                return
            self.routes.route_ok(route)
            log.event(sid, "mta", "connected")
            if session.tls is not None:
                log.event(sid, "mta", "tls", ciphers=session.tls[0])
            reason = "quit"
            failures = 0                  # recipients refused in a row on this session
            try:
                while group:
                    result = await self._send(session, group)
                    messages += 1
                    for job, outcome in zip(group, result.recipients):
                        self._apply(sid, job, route, outcome)
                        failures = 0 if outcome.outcome is Outcome.OK else failures + 1
                    if result.error:
                        # The connection or the peer's protocol broke (a
                        # timeout, a reply out of bounds): said once here,
                        # the deliveries above carry it too.
                        log.event(sid, "mta", "error", reason=result.error)
                        reason = "error"
                        break
                    if not session.usable:
                        reason = "closed"         # the peer said 421: no QUIT
                        break
                    if messages >= self.limits.session_mail_max:
                        break
                    if failures >= self.limits.max_failures_per_session:
                        # A peer refusing everything: another session (or
                        # route) may fare better, and it is not hammered.
                        log.event(sid, "mta", "error",
                                  reason=f"{failures} failures in a row on this session")
                        break
                    group = self._claim()
            finally:
                await session.close()
                log.event(sid, "mta", "disconnected", reason=reason, messages=messages)
        finally:
            for job in group:       # anything not answered goes back to wait
                if not job.done.done():
                    self.pending.appendleft(job)
            self.routes.session_closed(route)
            self.last_used = self.agent.clock()
            self.wake.set()
            if self.pending and (self.runner is None or self.runner.done()):
                self.runner = asyncio.get_running_loop().create_task(self._run())

    async def _send(self, session, group: list[_Job]):  # type: ignore[no-untyped-def]
        first = group[0].envelope
        sender = self.action.mail_from if self.action.mail_from is not None else first.sender
        transaction = Transaction(
            sender=sender,
            recipients=tuple(Recipient(j.envelope.dest, j.envelope.dsn_notify,
                                       j.envelope.dsn_orcpt, j.envelope.id) for j in group),
            ret=first.dsn_ret, envid=first.dsn_envid,
            smtputf8="smtputf8" in first.flags)
        message = group[0].message
        message.seek(0)                 # an lseek: no disk wait, no thread hop
        return await session.send(transaction, message)

    def _apply(self, sid: str, job: _Job, route: Route, outcome) -> None:  # type: ignore[no-untyped-def]
        reply: Reply = outcome.reply
        if outcome.outcome is Outcome.OK:
            self._log_delivery(sid, job, route, "Ok", str(reply))
            self._finish(job, None)
        elif outcome.outcome is Outcome.PERMFAIL:
            self._log_delivery(sid, job, route, "PermFail", str(reply))
            self._finish(job, PermFail(reply, str(reply)))
        else:
            self._log_delivery(sid, job, route, "TempFail", str(reply))
            self._finish(job, TempFail(reply, str(reply)))

    async def _client_config(self, route: Route) -> ClientConfig:
        relay = self.relay
        credentials = None
        if relay.label is not None:
            assert relay.auth is not None
            # Looked up at every session: an edited table applies to the next one.
            credentials = await self.agent.tables[relay.auth].lookup(Service.CREDENTIALS, relay.label)
            if credentials is None:
                raise TempFail(Reply(451, "4.7.0", "No credentials for relay label"),
                               f"no credentials for label {relay.label!r} in table {relay.auth!r}")
        helo_src = None
        if relay.helo_src is not None and route.source.address is not None:
            found = await self.agent.tables[relay.helo_src].lookup(Service.ADDRNAME,
                                                                   route.source.address)
            if found is not None:
                helo_src = {route.source.address: found.name}
        helo = helo_name(route.source, relay, self.agent.config.hostname, helo_src)
        tls_context = opportunistic = None
        if relay.pki is not None:
            tls_context, opportunistic = self.agent.cert_contexts[(relay.ca, relay.pki)]
        elif relay.ca is not None:
            tls_context = self.agent.ca_contexts[relay.ca]
        scheme = relay.scheme
        if scheme == "smtp" and relay.verify:
            scheme = "smtp+tls"
        # The MX's or the smarthost's name; none for an address, checked as such.
        server_name = route.host.name
        fields: dict[str, object] = {}
        if self.agent.client_limits is not None:
            fields["limits"] = self.agent.client_limits
        elif self.limits is not None:
            fields["limits"] = ClientLimits(
                connect_timeout=self.limits.connect_timeout,
                reply_timeout=self.limits.reply_timeout,
                data_end_timeout=self.limits.data_timeout)
        return ClientConfig(host=route.host.address, scheme=scheme, port=relay.port,
                            server_name=server_name,
                            helo=helo, source=route.source.address, credentials=credentials,
                            tls_context=tls_context, opportunistic_context=opportunistic,
                            **fields)  # type: ignore[arg-type]

    def _log_delivery(self, sid: str, job: _Job, route: Route | None, result: str,
                      stat: str) -> None:
        """`mta delivery`; without a route (DNS, no usable route) the relay
        is named instead of a host."""
        env = job.envelope
        if route is None:
            source, relay = "-", str(self.relay)
        else:
            host = route.host
            source = route.source.address or "-"
            relay = f"{host.address} ({host.name})" if host.name else host.address
        log.event(sid, "mta", "delivery", evpid=f"{env.id:016x}",
                  **{"from": log.path(env.sender)}, to=log.path(env.dest),
                  rcpt=log.path(env.rcpt) if env.rcpt else "-", source=source, relay=relay,
                  delay=log.format_delay(time.time() - env.ctime), result=result, stat=stat)


def _host_name(host: str) -> str:
    """A smarthost's name, as its certificate must carry it and the log names
    it; "" for an address (`192.0.2.1`, `[192.0.2.1]`, `[IPv6:2001:db8::1]`):
    the address is then checked against the certificate, and logged once.
    """
    try:
        if address_literal(host) is not None:
            return ""
        ipaddress.ip_address(host)
        return ""
    except (PermFail, ValueError):
        return host


def _hostport(route: Route, relay: Relay) -> str:
    address = route.host.address
    if ":" in address:
        address = f"[{address}]"
    port = relay.effective_port
    return f"{address}:{port}" if port else address
