"""The daemon: builds every part from one Config and runs them.

The only module that knows every part (docs/architecture.md): it locks the
spool, opens the tables, recovers the queue (scheduling what was committed
before a crash), opens the listeners, and only then starts the scheduler
with the local delivery agent -- so no client is answered before the queue
is sound, and a daemon that cannot bind its ports delivers nothing.  It owns the
signals: SIGTERM/SIGINT stop, SIGHUP updates the tables.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from postillion import log, metrics
from postillion.config import support as config_support
from postillion.config.model import ActionDecl, Config, ListenDecl, TableDecl
from postillion.errors import MailError, PermFail, Reply, TempFail
from postillion.lookup.auth import Authenticators
from postillion.lookup.expand import SYSTEM_USERBASE, Expander, ReadForward, local_forward, userinfo
from postillion.mda.agent import MdaAgent, MdaJob
from postillion.mda.format import FormatEnv, FormatError, expand
from postillion.mda.jobs import METHODS as JOB_METHODS
from postillion.mda.jobs import build_job, job_method
from postillion.mda.maildir import stable_name
from postillion.mda.stream import delivered_to, is_junk
from postillion.queue.envelope import Envelope
from postillion.queue.lock import SpoolBusy, SpoolLock
from postillion.daemon.bounces import Bouncer
from postillion.mta.lmtp import LmtpAgent, LmtpJob
from postillion.queue.agents import Agents
from postillion.queue.scheduler import Scheduler
from postillion.queue.store import QueueStore
from postillion.rules import Ruleset, SessionFacts
from postillion.smtp import interfaces
from postillion.smtp.inject import inject
from postillion.smtp.interfaces import ListenAddressError
from postillion.smtp.server import Listener, ListenerError, listen_family, listener_context
from postillion.smtp.context import SessionContext
from postillion.table.services import Service
from postillion.table.table import Table, TableError, open_table
from postillion.table.values import Userinfo

if TYPE_CHECKING:
    from postillion.mta.agent import MtaAgent

logger = logging.getLogger("postillion.daemon")

STOP_GRACE = 5.0  # seconds in-flight deliveries get to finish on SIGTERM

#: Expanded addresses are `internal`: the rules see them as `from local` (docs/tables.md).
INTERNAL = SessionFacts(address="local", is_local=True)


class StartupError(Exception):
    """The daemon cannot start: a table does not open, a port is taken..."""


def required_services(config: Config) -> dict[str, set[Service]]:
    """Which service each table must serve: the parser's record of every use."""
    needs: dict[str, set[Service]] = {}
    for use in config.table_uses:
        needs.setdefault(use.table, set()).add(Service(use.service))
    return needs


async def open_tables(config: Config, only: set[str] | None = None) -> dict[str, Table]:
    """Open every declared table (or those named in `only`) and check it
    serves what the config asks of it."""
    tables: dict[str, Table] = {}
    needs = required_services(config)
    try:
        for decl in config.tables.values():
            if only is not None and decl.name not in only:
                continue
            table = make_table(decl, config.limits.sub_addr_delim)
            tables[decl.name] = table
            await table.open()
            for service in sorted(needs.get(decl.name, ()), key=lambda s: s.value):
                await table.verify(service)
    except TableError as e:
        await close_tables(tables)
        raise StartupError(str(e)) from None
    return tables


def lock_spool(lock: SpoolLock) -> None:
    """Take the spool's lock, or StartupError naming the spool (and holder)."""
    try:
        lock.acquire()
    except SpoolBusy as e:
        raise StartupError(str(e)) from None
    except OSError as e:
        raise StartupError(f"queue {lock.path.parent}: {e.strerror or e}") from None


def listen_error(decl: ListenDecl, error: OSError) -> StartupError:
    """A listener that cannot be bound, said as the administrator wrote it."""
    # asyncio's bind error has an errno but no strerror.
    reason = os.strerror(error.errno) if error.errno else str(error)
    return StartupError(f"{decl.pos}: cannot listen on {decl.address} port "
                        f"{decl.effective_port}: {reason}")


def delivery_tables(config: Config) -> set[str]:
    """The tables a delivery reads (the actions' userbases): all the queue
    process opens -- credentials and the rest stay in the smtp processes."""
    return {a.userbase for a in config.actions.values() if a.userbase is not None}


def make_table(decl: TableDecl, sub_addr_delim: str = "+") -> Table:
    return open_table(decl.name, decl.backend, decl.config, items=decl.items,
                      pairs=decl.pairs, is_map=decl.is_map, sub_addr_delim=sub_addr_delim)


async def close_tables(tables: dict[str, Table]) -> None:
    for table in tables.values():
        try:
            await table.close()
        except Exception:
            logger.exception("closing table %s", table.name)


def _ourselves() -> Userinfo:
    """Who this process is, as a userinfo (a daemon not started as root
    runs everything as itself)."""
    uid, gid = os.geteuid(), os.getegid()
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return Userinfo(str(uid), uid, gid, "/")
    return Userinfo(entry.pw_name, uid, gid, entry.pw_dir)


def delivery_prefix(env: Envelope) -> bytes:
    """`Return-Path:` and `Delivered-To:` as every local delivery gets them."""
    return f"Return-Path: <{env.sender}>\r\nDelivered-To: {env.dest}\r\n".encode("utf-8", "replace")


def lmtp_job(action: ActionDecl, env: Envelope, user: Userinfo) -> LmtpJob:
    """What the lmtp method sends for one envelope (mta/lmtp.py): RCPT TO
    the user's name from the userbase or, with `rcpt-to`, the recipient
    address after expansion (OpenSMTPD's mail.lmtp -u and -r); a socket
    path's format specifiers expanded (a malformed one is permanent)."""
    destination = action.destination or ""
    if destination.startswith("/"):
        facts = FormatEnv(sender=env.sender, rcpt=env.rcpt, dest=env.dest,
                          username=user.username, directory=user.home)
        try:
            destination = expand(destination, facts)
        except FormatError as e:
            raise PermFail(Reply(550, "5.2.0", str(e)), str(e)) from None
    return LmtpJob(env, destination, env.dest if action.rcpt_to else user.username)


class Daemon:
    def __init__(self, config: Config, spool: Path, paused: frozenset[str] = frozenset()) -> None:
        self.config = config
        self.paused = paused
        self.spool = spool
        self.tables: dict[str, Table] = {}
        self.lock = SpoolLock(spool)
        self.store = QueueStore(spool)
        # AUTH checks in threads of their own, never ahead of the queue's flushes.
        self.authenticators = Authenticators(config.limits)
        self.scheduler: Scheduler | None = None
        self.listeners: list[Listener] = []
        self.local_ctx: SessionContext | None = None     # set by prepare()
        self.mta: MtaAgent | None = None                 # set by start()
        #: Envelope type -> agent; the scheduler sees only this door.
        self.agents = Agents({"mda": self.dispatch})
        self.mda = MdaAgent(config.mda)
        #: How a job is delivered: here, by the agent; in the queue process,
        #: by asking the parent (daemon/roles.py).
        self.deliver: Callable[[MdaJob, Envelope], Awaitable[None]] = \
            lambda job, env: self.mda.deliver(job)
        self.lmtp_agent: LmtpAgent | None = None         # set by start()
        #: How an lmtp job is delivered: here, by the agent; in the queue
        #: process, by asking the mta process (daemon/roles.py).
        self.lmtp: Callable[[LmtpJob], Awaitable[None]] = self._lmtp_here
        #: Local delivery, by method (`mda.jobs.job_method`): each returns
        #: the user it delivered as.  forward-only and expand-only envelopes
        #: always carry their target (lookup/expand.py).
        self.local_methods: dict[str, Callable[[Envelope, ActionDecl], Awaitable[str]]] = {
            method: self.deliver_by_agent for method in JOB_METHODS}
        self.local_methods["lmtp"] = self._lmtp_method
        #: Reads a user's .forward at RCPT time: here; the smtp processes
        #: ask the root parent instead (daemon/roles.py).
        self.read_forward: ReadForward = local_forward
        self._stopping = asyncio.Event()
        self._scheduler_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        lock_spool(self.lock)       # before anything touches the queue or a port
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def prepare(self) -> list[Listener]:
        """Everything the configuration decides, up to the bind: refuse
        options not implemented yet, open and verify every table, build each
        listener's context (certificates, AUTH, senders), resolve what each
        `listen on` names to this machine's addresses.

        `postillion check` runs exactly this, so check refuses what run
        refuses; what is left to `start` is the spool and the ports.
        Raises StartupError naming file:line:column.
        """
        ctx = await self.prepare_routing()
        listeners = []
        for decl in self.config.listeners:
            try:
                listener_ctx = listener_context(ctx, decl, self.config, self.tables,
                                                self.authenticators)
                hosts = await asyncio.to_thread(self._listen_hosts, decl)
            except ListenerError as e:
                raise StartupError(str(e)) from None
            except ListenAddressError as e:
                raise StartupError(f"{decl.pos}: cannot listen on {decl.address}: {e}") from None
            listeners.append(Listener(decl, listener_ctx, hosts))
        if any(a.method == "relay" and a.pki is not None for a in self.config.actions.values()):
            # A relay's client certificate, loaded as the mta process will.
            from postillion.mta.agent import ClientCertError, client_contexts
            try:
                await asyncio.to_thread(client_contexts, self.config)
            except ClientCertError as e:
                raise StartupError(str(e)) from None
        return listeners

    async def prepare_routing(self) -> SessionContext:
        """What decides where mail goes, and nothing that binds or reads a
        key: refuse options not implemented yet, open and verify every
        table, build the rules and the expander.  Returns (and keeps as
        `local_ctx`) the listener-less context bounces are injected
        through; `postillion route` explains a recipient with it.
        Raises StartupError."""
        if (refusal := config_support.refusal(self.config)) is not None:
            raise StartupError(refusal)  # an option not implemented yet is never ignored
        self.tables = await open_tables(self.config)
        ruleset = Ruleset(self.config, self.tables)

        async def route(address: str) -> ActionDecl | None:
            return await ruleset.match(INTERNAL, "", address)

        expander = Expander(self.tables, self.config.limits, route,
                            forward=lambda user: self.read_forward(user))
        ctx = SessionContext(hostname=self.config.hostname, limits=self.config.limits,
                             ruleset=ruleset, expander=expander, store=self.store,
                             queue_ttl=self.config.queue.ttl)
        # Bounces enter the queue through a session on this listener-less
        # context: `from local`, no AUTH, no TLS (smtp/inject.py).
        self.local_ctx = ctx
        return ctx

    @staticmethod
    def _listen_hosts(decl: ListenDecl) -> list[str] | None:
        family = listen_family(decl)
        hosts = interfaces.resolve(decl.address, decl.effective_port, family)
        interfaces.check_bindable(hosts, family)
        return hosts

    async def _start(self) -> None:
        listeners = await self.prepare()
        self.mda.start()
        if any(a.method == "relay" for a in self.config.actions.values()):
            # Imported here: the MTA brings the DNS library, which a daemon
            # that never relays (and each of its processes) need not load.
            from postillion.mta.agent import MtaAgent
            self.mta = MtaAgent(self.config, self.tables)
            self.agents.register("mta", self.relay)
        self.lmtp_agent = LmtpAgent(self.config.hostname)
        try:
            envelopes = await self.store.open()
        except OSError as e:
            raise StartupError(f"queue {self.spool}: {e.strerror or e}"
                               f"{f': {e.filename}' if e.filename else ''}") from None
        bouncer = Bouncer(self.store, self.config.hostname, self.inject,
                          self.config.bounce.warn_interval)
        self.scheduler = Scheduler(self.store, self.agents.deliver,
                                   bounce=bouncer.failed, warn=bouncer.delayed,
                                   delivered=bouncer.succeeded)
        # The store schedules what it commits: an envelope is never durable
        # yet unscheduled, even if its session dies right after the commit.
        self.store.on_commit = self.scheduler.schedule
        for env in envelopes:
            self.scheduler.schedule(env)
        for listener in listeners:
            decl = listener.decl
            try:
                await listener.start()
            except OSError as e:
                raise listen_error(decl, e) from None
            self.listeners.append(listener)
        # Deliveries start only once every listener is bound: a daemon that
        # fails to start has delivered nothing.
        self.scheduler.paused.update(self.paused & {"mda", "mta"})
        self._scheduler_task = asyncio.create_task(self.scheduler.run())
        logger.info("postillion ready: %d envelope(s) in queue", len(envelopes))

    async def inject(self, sender: str, rcpts: Sequence[str], message: bytes) -> Reply:
        """Queue a message through a local session (a bounce); the reply says
        whether it was queued (250)."""
        assert self.local_ctx is not None
        return (await inject(self.local_ctx, sender, rcpts, message)).reply

    async def relay(self, env: Envelope) -> None:
        """The mta agent, in this process: the message from the spool."""
        assert self.mta is not None
        with open(self.store.message_path(env.msgid), "rb") as message:
            await self.mta.relay(env, message)

    async def _lmtp_here(self, job: LmtpJob) -> None:
        """The lmtp method, in this process: the message from the spool."""
        assert self.lmtp_agent is not None
        try:
            message = await asyncio.to_thread(open, self.store.message_path(job.envelope.msgid), "rb")
        except OSError as e:
            raise TempFail(Reply(451, "4.3.0", "Queued message unreadable"),
                           f"queued message unreadable: {e.strerror or e}") from None
        with message:
            await self.lmtp_agent.deliver(job, message)

    async def dispatch(self, env: Envelope) -> None:
        """The local (`mda`) agent: deliver one envelope as its user, log the
        outcome in the mda layout, re-raise failures.

        A message that already holds `Delivered-To:` its recipient came
        back in a loop: refused for good, whatever the method."""
        sid = log.new_id()
        user = env.mda_user
        try:
            action = self.config.actions.get(env.dispatcher)
            if action is None:
                raise TempFail(Reply(451, "4.3.0", f"no action {env.dispatcher!r} in the configuration"))
            method = self.local_methods.get(job_method(env, action))
            if method is None:
                raise PermFail(Reply(550, "5.3.5", f"action {action.name} cannot deliver locally"))
            if await asyncio.to_thread(self._loops, env):
                metrics.DELIVERY_LOOPS.inc()
                raise PermFail(Reply(550, "5.4.6", "Loop detected"),
                               f"Loop detected: Delivered-To: {env.dest} already in the message")
            user = await method(env, action)
        except MailError as e:
            result = log.RESULT_TEMPFAIL if isinstance(e, TempFail) else log.RESULT_PERMFAIL
            log.mda_delivery(sid, env.id, env.sender, env.dest, env.rcpt, user,
                             time.time() - env.ctime, result, e.reason)
            raise
        log.mda_delivery(sid, env.id, env.sender, env.dest, env.rcpt, user,
                         time.time() - env.ctime, log.RESULT_OK, "Delivered")

    def _is_junk(self, env: Envelope) -> bool:
        try:
            with open(self.store.message_path(env.msgid), "rb") as message:
                return is_junk(message)
        except OSError as e:
            raise TempFail(Reply(451, "4.3.0", "queued message unreadable"),
                           f"queued message unreadable: {e.strerror or e}") from None

    def _loops(self, env: Envelope) -> bool:
        try:
            with open(self.store.message_path(env.msgid), "rb") as message:
                return delivered_to(message, env.dest)
        except OSError as e:
            raise TempFail(Reply(451, "4.3.0", "queued message unreadable"),
                           f"queued message unreadable: {e.strerror or e}") from None

    async def deliver_by_agent(self, env: Envelope, action: ActionDecl) -> str:
        """maildir, mbox, a command, or an alias target: a job for the mda
        agent (here, or in the root parent); returns the user delivered as."""
        info = await self.delivery_user(env, action)
        junk = action.junk and job_method(env, action) == "maildir" and \
            await asyncio.to_thread(self._is_junk, env)
        job = build_job(env, action, info, message=self.store.message_path(env.msgid),
                        prefix=delivery_prefix(env),
                        name=stable_name(env.id, env.ctime, self.config.hostname),
                        wrappers=dict(self.config.mda.wrappers),
                        sub_addr_delim=self.config.limits.sub_addr_delim, junk=junk)
        await self.deliver(job, env)
        return info.username

    async def _lmtp_method(self, env: Envelope, action: ActionDecl) -> str:
        """lmtp: the mta process (or this one) hands the message to the
        LMTP server; returns the user delivered for."""
        info = await self.delivery_user(env, action)
        await self.lmtp(lmtp_job(action, env, info))
        return info.username

    async def delivery_user(self, env: Envelope, action: ActionDecl) -> Userinfo:
        """Whom a delivery runs as (docs/configuration.md, Local delivery):
        the queue user for a target an alias table named (the daemon's own
        user when it is not root), the action's `user` (a system account)
        for its own method, else the recipient from the userbase."""
        if env.mda_exec and not env.mda_user:
            if os.geteuid() != 0:
                return await asyncio.to_thread(_ourselves)
            name = self.config.processes.queue_user
            info = await SYSTEM_USERBASE.lookup(Service.USERINFO, name)
            if info is None:
                raise TempFail(Reply(451, "4.3.0", f"queue user {name} does not exist"))
            return info
        if action.user is not None and not env.mda_exec:
            info = await SYSTEM_USERBASE.lookup(Service.USERINFO, action.user)
            if info is None:
                raise TempFail(Reply(451, "4.3.0", f"user {action.user} does not exist"),
                               f"action {action.name}: user {action.user} does not exist")
            return info
        info = await userinfo(self.tables, action, env.mda_user)
        if info is None:
            raise PermFail(Reply(550, "5.1.1", f"user {env.mda_user} no longer exists"))
        return info

    async def update_tables(self) -> None:
        for name in list(self.tables):
            await self.update_table(name)

    async def update_table(self, name: str) -> bool:
        """Reload one table (`ctl update table NAME`); False when this
        process holds no table of that name.  A failed reload keeps the old
        contents (logged), and still counts as held."""
        table = self.tables.get(name)
        if table is None:
            return False
        try:
            await table.update()
        except TableError as e:
            logger.warning("update of table %s failed, old contents kept: %s", table.name, e)
        else:
            logging.getLogger("postillion.table").debug("table %s updated", name)
        return True

    async def stop(self) -> None:
        for listener in self.listeners:
            await listener.stop()
        if self.scheduler is not None:
            # Deliveries still running get a moment; the rest stay queued for
            # the next start (as OpenSMTPD, which leaves its queue on disk).
            await self.scheduler.stop(timeout=STOP_GRACE)
        if self._scheduler_task is not None:
            self._scheduler_task.cancel()
            await asyncio.gather(self._scheduler_task, return_exceptions=True)
        await self.store.close()
        if self.mta is not None:
            await self.mta.stop()
        if self.lmtp_agent is not None:
            await self.lmtp_agent.stop()
        self.authenticators.close()
        await self.mda.stop()
        await close_tables(self.tables)
        self.lock.release()

    async def serve(self) -> None:
        """Run until SIGTERM or SIGINT; SIGHUP updates the tables."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stopping.set)
        loop.add_signal_handler(signal.SIGINT, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.update_tables()))
        await self.start()
        try:
            await self._stopping.wait()
        finally:
            logger.info("postillion stopping")
            await self.stop()
