"""Listeners: accept connections and run a Session for each.

The listen backlog is 1024: OpenSMTPD's backlog of 5 drops connections when
20 clients arrive at once.  Sessions are bounded in total and per client
address (`smtp limit max-sessions` / `max-sessions-per-ip`); the excess is
told `421 4.7.0` in place of the banner and closed.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import socket
from typing import Any, Mapping

from postillion import metrics
from postillion.config.model import Config, Limits, ListenDecl
from postillion.errors import Reply
from postillion.lookup.auth import Authenticators
from postillion.smtp.context import SessionContext
from postillion.smtp.session import Session
from postillion.table.services import Service
from postillion.table.table import Table
from postillion.tls import TlsConfigError, server_context

BACKLOG = 1024
#: A draining listener waits this long after closing its sockets for the
#: handlers of connections accepted just before (then for their sessions).
DRAIN_SETTLE = 0.5
REPLY_BUSY = Reply(421, "4.7.0", "Too many connections, try again later")
#: The banner while `postillion ctl pause smtp` holds the listeners.
REPLY_PAUSED = Reply(421, "4.3.2", "Not accepting mail now, try again later")

logger = logging.getLogger("postillion.smtp")


class ListenerError(Exception):
    """A listener cannot be set up: its pki, ca or a table does not fit."""


def listener_context(base: SessionContext, decl: ListenDecl, config: Config,
                     tables: Mapping[str, Table], authenticators: Authenticators) -> SessionContext:
    """The SessionContext of one `listen on`: hostname, TLS context, AUTH
    checker (from `authenticators`, shared with the listeners naming the
    same table) and senders table (docs/configuration.md, listen on).

    Raises ListenerError naming what is wrong (a pki that does not load, an
    auth table serving neither credentials nor auth, a senders table
    without mailaddrmap), so the daemon refuses to start rather than run a
    listener without the protection it was configured with.
    """
    hostname = decl.hostname or base.hostname
    try:
        tls = server_context(decl, hostname, config.pkis, config.cas, config.limits.ciphers)
    except TlsConfigError as e:
        raise ListenerError(f"{decl.pos}: {e}") from None
    authenticator = None
    if decl.auth:
        table = None
        if decl.auth_table is not None:
            table = tables[decl.auth_table]
            if not (table.serves(Service.AUTH) or table.serves(Service.CREDENTIALS)):
                raise ListenerError(f"{decl.pos}: table {decl.auth_table} serves neither "
                                    "credentials nor auth")
        authenticator = authenticators.get(table)
    hostnames = None
    if decl.hostnames is not None:
        hostnames = tables[decl.hostnames]
        if not hostnames.serves(Service.ADDRNAME):
            raise ListenerError(f"{decl.pos}: table {decl.hostnames} does not serve addrname")
    senders = None
    if decl.senders is not None:
        senders = tables[decl.senders]
        if not senders.serves(Service.MAILADDRMAP):
            raise ListenerError(f"{decl.pos}: table {decl.senders} does not serve mailaddrmap")
    return dataclasses.replace(base, hostname=hostname, listen=decl, tls_context=tls,
                               authenticator=authenticator, senders=senders, hostnames=hostnames)


def listen_family(decl: ListenDecl) -> int:
    return {"inet4": socket.AF_INET, "inet6": socket.AF_INET6}.get(decl.family or "",
                                                                  socket.AF_UNSPEC)


def format_sockaddr(address: tuple[str, int] | tuple[str, int, int, int]) -> str:
    """`127.0.0.1:2525` or `[::1]:2525`, as administrators write them."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind(decl: ListenDecl, hosts: list[str] | None) -> list[socket.socket]:
    """The listening sockets of one `listen on`, bound as asyncio would bind
    them (every address of `hosts`, or the wildcard of each family), for the
    parent process to hand to the smtp processes.  Raises OSError."""
    family = listen_family(decl)
    infos = []
    for host in hosts if hosts is not None else [None]:
        infos += socket.getaddrinfo(host, decl.effective_port, family, socket.SOCK_STREAM,
                                    0, socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for af, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(af, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if af == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
            logger.info("listening on %s", format_sockaddr(sock.getsockname()))
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


class Gate:
    """Who may open a session: `max-sessions` per listener and
    `max-sessions-per-ip`, counted here -- for a daemon in one process.
    The smtp processes share one count, kept by the parent (Postfix's
    anvil); their gate asks it (daemon/roles.py)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.total = 0
        self.per_ip: collections.Counter[str] = collections.Counter()

    async def admit(self, ip: str) -> bool:
        return self.take(ip)

    def take(self, ip: str) -> bool:
        if self.total >= self.limits.max_sessions or self.per_ip[ip] >= self.limits.max_sessions_per_ip:
            return False
        self.total += 1
        self.per_ip[ip] += 1
        return True

    def leave(self, ip: str) -> None:
        self.total -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]


class Listener:
    """One `listen on` statement bound to a socket."""

    def __init__(self, decl: ListenDecl, ctx: SessionContext,
                 hosts: list[str] | None = None) -> None:
        """`hosts`: the addresses `interfaces.resolve` found (None: every one)."""
        self.decl = decl
        self.ctx = ctx
        self.hosts = hosts
        self.sessions: set[asyncio.Task[None]] = set()
        self.gate = Gate(ctx.limits)
        self.servers: list[asyncio.base_events.Server] = []
        #: `ctl pause smtp`: new clients get REPLY_PAUSED; open sessions go on.
        self.paused = False

    async def start(self, socks: list[socket.socket] | None = None) -> None:
        """Bind and serve; or serve `socks`, bound by the parent process
        (an smtp process never binds: it inherits its listening sockets)."""
        family = listen_family(self.decl)
        # SMTPS: the loop does the handshake before the session starts, so
        # the ClientHello can never land in a plaintext stream buffer.  A
        # failed or slow (Limits.tls_timeout) handshake closes the connection.
        tls = self.ctx.tls_context if self.decl.smtps else None
        options: dict[str, Any] = dict(
            limit=self.ctx.limits.max_data_line * 2, ssl=tls,
            ssl_handshake_timeout=self.ctx.limits.tls_timeout if tls is not None else None)
        if socks is not None:
            for sock in socks:
                self.servers.append(await asyncio.start_server(self._accept, sock=sock, **options))
            return
        server = await asyncio.start_server(
            self._accept, self.hosts, self.decl.effective_port, family=family, backlog=BACKLOG,
            reuse_address=True, **options)
        self.servers.append(server)
        for sock in server.sockets:
            logger.info("listening on %s", format_sockaddr(sock.getsockname()))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) else "local"
        if self.paused:
            metrics.SMTP_SESSIONS_PAUSED.inc()
            logger.debug("smtp paused: %s refused", ip)
            await _refuse(writer, REPLY_PAUSED)
            return
        # Held from the accept, the gate's round trip included: a drain
        # waits for this client too.  (Counted by the Session, once admitted.)
        task = asyncio.current_task()
        assert task is not None
        self.sessions.add(task)
        try:
            if not await self.gate.admit(ip):
                writer.write(REPLY_BUSY.to_bytes())
                try:
                    await asyncio.wait_for(writer.drain(), 5)
                except (OSError, asyncio.TimeoutError):
                    pass
                writer.close()
                return
            try:
                await Session(self.ctx, reader, writer).run()
            except Exception:
                logger.exception("session crashed")  # a bug must cost one session, not the daemon
            finally:
                self.gate.leave(ip)
        finally:
            self.sessions.discard(task)

    async def drain(self, timeout: float) -> None:
        """Stop accepting, and let the open sessions end by themselves, for
        at most `timeout` s (a reload: the listening sockets live on in the
        processes that replace this one, so closing ours refuses no one)."""
        for server in self.servers:
            server.close()
        # A connection accepted just before the close gets its handler a
        # moment later: wait for it, then for every session.
        deadline = asyncio.get_running_loop().time() + timeout
        await asyncio.sleep(DRAIN_SETTLE)
        while self.sessions and (left := deadline - asyncio.get_running_loop().time()) > 0:
            await asyncio.wait(set(self.sessions), timeout=left)

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()
        for task in list(self.sessions):
            task.cancel()
        if self.sessions:
            await asyncio.wait(self.sessions, timeout=5)


async def _refuse(writer: asyncio.StreamWriter, reply: Reply) -> None:
    """Say `reply` in place of the banner and close."""
    writer.write(reply.to_bytes())
    try:
        await asyncio.wait_for(writer.drain(), 5)
    except (OSError, asyncio.TimeoutError):
        pass
    writer.close()
