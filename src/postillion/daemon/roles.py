"""The unprivileged roles: `python -m postillion.daemon.roles ROLE FD`.

The parent (`parent.py`) execs each role as root with its descriptors: FD,
a memfd holding the role's RoleArgs and the configuration (pickled: the
parent parsed it, so every process runs the very same one), the channel to
the parent, the channels to the other roles, and for smtp the listening
sockets.  A role opens what needs
root (tables, TLS keys: the certificates are loaded while building each
listener's context) and the spool directory, then drops to the queue user
for good, asks to die with the parent, and says Hello.

* **smtp** (×N): sessions, TLS, AUTH, rules, expansion; commits each
  message to the spool itself (group commit, fsync before 250) and tells the
  queue process which envelopes it committed.  System passwords are checked
  by the parent, which alone may read /etc/shadow.
* **queue**: recovers the spool, schedules, and dispatches each due envelope:
  a local one by asking the parent to deliver it (the parent starts the
  per-uid delivery workers), a relayed one to the mta process; applies the
  results, and queues bounces through an smtp process.
* **mta** (when an action relays or delivers over LMTP): DNS, routes, the
  SMTP and LMTP client; each message arrives as an open descriptor, never
  the spool.

A role exits when its parent channel closes, on SIGTERM (after finishing
what it can), and when the parent dies (SIGKILL from the kernel).  After a
reload an smtp process gets Drain: it stops accepting, finishes its open
sessions under its own configuration, and exits.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import pickle
import pwd
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from postillion import channel as ch
from postillion import log
from postillion.config.model import Config
from postillion.control import protocol as wire
from postillion.control.enqueue import Enqueue
from postillion.control.queueverbs import QueueVerbs
from postillion.control.remote import RemoteHandler, answer, result_of
from postillion.control.server import ControlError, ControlServer
from postillion.control.smtpverbs import smtp_handlers
from postillion.daemon import Daemon, StartupError, close_tables, delivery_tables, open_tables
from postillion.daemon import exporter
from postillion.daemon.bounces import Bouncer
from postillion.daemon.controlverbs import ControlVerbs
from postillion.daemon.relaying import MtaLink, run_one
from postillion.daemon.smtplinks import SmtpLinks
from postillion.errors import PermFail, Reply, TempFail
from postillion.lookup.auth import AuthResult, Authenticators
from postillion.lookup.forward import ForwardUnusable
from postillion.mda.agent import MdaJob
from postillion.mta.lmtp import LmtpAgent, LmtpJob
from postillion.privileges import die_with_parent, drop_privileges
from postillion.queue.envelope import Envelope
from postillion.queue.scheduler import Scheduler
from postillion.smtp.inject import inject
from postillion.smtp.context import Submitter
from postillion.table.backends import proc as proc_backend
from postillion.table.values import Userinfo

logger = logging.getLogger("postillion.role")

#: Longest a role waits for the parent's answer to a request: a delivery
#: (the worker's own timeout is 300 s) or a system password check.
REQUEST_TIMEOUT = 330.0
#: A role stopping gives deliveries in flight this long (as the daemon does).
STOP_GRACE = 5.0
#: A draining smtp process waits this long for a queue channel to announce
#: its last commits (the queue process is restarted by the same reload).
DRAIN_ANNOUNCE = 10.0


@dataclass(frozen=True, slots=True)
class RoleArgs:
    """What the parent tells a role on its command line (JSON)."""

    role: str                      # "smtp", "queue" or "mta"
    index: int                     # smtp process number, from 0
    parent: int                    # the parent's pid (die with it)
    channel: int                   # fd: the channel to the parent
    spool: str                     # the spool directory
    uid: int                       # the queue user, or our own uid when not root
    gid: int
    foreground: bool               # log to stderr (-d)
    verbose: bool
    paused: tuple[str, ...] = ()
    first: bool = True             # queue: the first start, clean incoming/
    peers: tuple[int, ...] = ()    # fds: channels to the other role(s)
    listeners: tuple[tuple[int, int], ...] = field(default=())  # (listener index, fd)
    mta: int = -1                  # fd: queue <-> mta channel (queue and mta), -1 none
    control: int = -1              # fd: the listening control socket (queue), -1 none
    metrics: int = -1              # fd: queue: the `metrics listen on` socket, -1 none


def write_start(args: RoleArgs, config: Config) -> int:
    """A memfd holding what one role starts from (the parent writes it)."""
    fd = os.memfd_create(f"postillion-{args.role}", 0)
    view = memoryview(pickle.dumps((args, config)))
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def read_start(fd: int) -> tuple[RoleArgs, Config]:
    """The role's side: root wrote it, so unpickling it is safe."""
    with os.fdopen(fd, "rb") as f:
        args, config = pickle.load(f)
    if not isinstance(args, RoleArgs) or not isinstance(config, Config):
        raise TypeError("the parent sent no RoleArgs and Config")
    return args, config


#: An injected message may exceed the size limit by this much: the DSN's
#: own headers and parts around a returned message.
INJECT_SLACK = 256 * 1024


def read_memfd(fd: int, limit: int) -> bytes:
    """The whole content of a descriptor another role filled (the channel
    closes it after the handler)."""
    chunks, size = [], 0
    while size <= limit:
        chunk = os.pread(fd, min(1 << 20, limit + 1 - size), size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise ValueError(f"message longer than {limit} octets")
    return b"".join(chunks)


def become(args: RoleArgs) -> None:
    """Drop to the queue user (when root), then die with the parent."""
    os.chdir(args.spool)   # as root: the spool may sit under a private directory
    if os.geteuid() == 0:
        if args.uid == 0 or args.gid == 0:
            raise PermissionError("refusing to run a role as root")
        exporter.hand_over_files(args.uid, args.gid)
        drop_privileges(args.uid, args.gid)
        # HOME still names root's home, which the role may not enter: a client
        # library looking there (asyncpg's ~/.pgpass, ~/.postgresql/) would
        # fail every reconnect.  libpq itself takes the effective user's home.
        os.environ["HOME"] = _home_of(args.uid)
    die_with_parent(args.parent)


def _home_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_dir or "/"
    except KeyError:
        return "/"


class Requests:
    """Requests to the parent that await an answer frame with the same id."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[ch.Frame]] = {}

    def new(self) -> tuple[int, asyncio.Future[ch.Frame]]:
        rid = next(self._ids)
        future: asyncio.Future[ch.Frame] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        return rid, future

    def answer(self, rid: int, frame: ch.Frame) -> None:
        future = self._waiting.pop(rid, None)
        if future is not None and not future.done():
            future.set_result(frame)

    def forget(self, rid: int) -> None:
        self._waiting.pop(rid, None)

    def fail_all(self) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("parent channel closed"))
        self._waiting.clear()


async def ask(parent: ch.Channel, requests: Requests, make: Any) -> ch.Frame:
    """Send the frame `make(id)` to the parent and wait for its answer."""
    rid, future = requests.new()
    try:
        parent.send(make(rid))
        async with asyncio.timeout(REQUEST_TIMEOUT):
            return await future
    finally:
        requests.forget(rid)


class RemoteSystemAuth:
    """An Authenticator for system accounts that asks the parent."""

    def __init__(self, parent: ch.Channel, requests: Requests) -> None:
        self.parent, self.requests = parent, requests

    async def check(self, user: str, password: str) -> AuthResult:
        try:
            answer = await ask(self.parent, self.requests,
                               lambda rid: ch.AuthCheck(rid, user, password))
        except (ConnectionError, TimeoutError):
            return AuthResult.TEMPFAIL
        assert isinstance(answer, ch.AuthAnswer)
        try:
            return AuthResult(answer.result)
        except ValueError:
            return AuthResult.TEMPFAIL


class RemoteForward:
    """Reads a user's `.forward` by asking the parent: the smtp process,
    as the queue user, cannot open the users' homes."""

    def __init__(self, parent: ch.Channel, requests: Requests) -> None:
        self.parent, self.requests = parent, requests

    async def read(self, user: Userinfo) -> str | None:
        try:
            answer = await ask(self.parent, self.requests,
                               lambda rid: ch.Forward(rid, user.uid, user.home))
        except (ConnectionError, TimeoutError):
            raise ForwardUnusable(f"{user.home}/.forward: the parent did not answer") from None
        assert isinstance(answer, ch.ForwardText)
        if answer.result == "found":
            return answer.text
        if answer.result == "none":
            return None
        raise ForwardUnusable(answer.text)


class RemoteGate:
    """A listener's session limits, counted by the parent across every smtp
    process (Postfix's anvil): one small round trip per connection."""

    def __init__(self, parent: ch.Channel, requests: Requests, listener: int) -> None:
        self.parent, self.requests, self.listener = parent, requests, listener

    async def admit(self, ip: str) -> bool:
        try:
            answer = await ask(self.parent, self.requests,
                               lambda rid: ch.Admit(rid, self.listener, ip))
        except (ConnectionError, TimeoutError):
            return False
        return isinstance(answer, ch.Admitted) and answer.ok == 1

    def leave(self, ip: str) -> None:
        try:
            self.parent.send(ch.Left(self.listener, ip))
        except ConnectionError:
            pass


async def smtp_role(args: RoleArgs, config: Config) -> None:
    requests = Requests()
    stopping = asyncio.Event()
    draining: list[int] = []        # the Drain frame's bound, once it came

    async def on_parent(frame: ch.Frame) -> None:
        if isinstance(frame, (ch.AuthAnswer, ch.Admitted, ch.ForwardText)):
            requests.answer(frame.id, frame)
        elif isinstance(frame, ch.QueuePeer) and frame.fds:
            queue.connect(socket.socket(fileno=os.dup(frame.fds[0])))
        elif isinstance(frame, ch.Drain) and not draining:
            draining.append(max(0, frame.timeout))
            stopping.set()
        elif isinstance(frame, ch.Control) and frame.verb in ("pause smtp", "resume smtp"):
            # The parent's word on `pause smtp`, which reaches a process
            # whose channel to the queue is not up yet (both restarting).
            done = await answer(frame, queue.handlers)
            if not parent.closed.is_set():
                parent.send(done)

    async def injected(frame: ch.Inject) -> ch.Injected:
        """A bounce, or a `sendmail` submission (`frame.user`), from the
        queue: queued through a local session."""
        try:
            message = read_memfd(frame.fds[0], config.limits.max_message_size + INJECT_SLACK)
        except (OSError, ValueError) as e:
            return ch.Injected(frame.id, 451, "4.3.0", f"Local injection failed: {e}")
        assert daemon.local_ctx is not None
        submitter = Submitter(frame.uid, frame.user) if frame.user else None
        reply = (await inject(daemon.local_ctx, frame.sender, frame.rcpts, message,
                              submitter=submitter)).reply
        return ch.Injected(frame.id, reply.code, reply.enhanced, reply.text)

    queue = QueueLink(injected)
    parent = ch.Channel(socket.socket(fileno=args.channel), on_parent, "parent channel")
    daemon = Daemon(config, Path("."))
    queue.handlers = smtp_handlers(daemon.listeners, daemon.update_table)
    daemon.authenticators = Authenticators(config.limits,
                                           system=RemoteSystemAuth(parent, requests))  # type: ignore[arg-type]
    daemon.read_forward = RemoteForward(parent, requests).read
    listeners = await daemon.prepare()            # tables, certificates: as root
    become(args)
    for fd in args.peers:
        queue.connect(socket.socket(fileno=fd))
    daemon.store.attach()
    daemon.store.on_commit = queue.committed
    socks: dict[int, list[socket.socket]] = {}
    for index, fd in args.listeners:
        socks.setdefault(index, []).append(socket.socket(fileno=fd))
    for index, listener in enumerate(listeners):
        listener.gate = RemoteGate(parent, requests, index)  # type: ignore[assignment]
        listener.paused = "smtp" in args.paused
        await listener.start(socks.get(index, []))
        daemon.listeners.append(listener)
    parent.send(ch.Hello("smtp", os.getpid()))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(daemon.update_tables()))
    closed = asyncio.ensure_future(parent.closed.wait())
    await asyncio.wait([closed, asyncio.ensure_future(stopping.wait())],
                       return_when=asyncio.FIRST_COMPLETED)
    if draining and not parent.closed.is_set():
        await drain(daemon, parent, queue, draining[0], args.index)
    requests.fail_all()
    await daemon.stop()


async def drain(daemon: Daemon, parent: ch.Channel, queue: QueueLink, timeout: float,
                index: int) -> None:
    """After a reload: stop accepting and let the open sessions finish
    under this process's configuration (the parent still answers their
    requests), at most `timeout` s, or until the parent goes or says
    SIGTERM.  The sessions left then are cut, as at a stop."""
    logger.info("smtp process %d draining after a reload: %d open session(s)", index,
                sum(len(listener.sessions) for listener in daemon.listeners))
    finished = asyncio.ensure_future(asyncio.gather(
        *(listener.drain(timeout) for listener in daemon.listeners)))
    closed = asyncio.ensure_future(parent.closed.wait())
    terminated = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, terminated.set)
    stopped = asyncio.ensure_future(terminated.wait())
    await asyncio.wait([finished, closed, stopped], return_when=asyncio.FIRST_COMPLETED)
    for task in (finished, closed, stopped):
        task.cancel()
    # The last commits' announcements leave before we do (the queue would
    # find them on disk, but only at its next start).
    for _ in range(int(DRAIN_ANNOUNCE / 0.05)):
        if not queue.pending:
            break
        await asyncio.sleep(0.05)


class QueueLink:
    """The smtp side of the queue channel.

    Envelopes committed in one turn of the event loop (a group commit's
    batch) leave in one Committed frame.  While no queue process listens
    (it is being restarted) they wait here, at most BACKLOG_MAX of them; the
    new queue process also finds them on disk when it starts, and
    scheduling an envelope twice is harmless."""

    BACKLOG_MAX = 100_000

    def __init__(self, injected: Callable[[ch.Inject], Awaitable[ch.Injected]]) -> None:
        self.channel: ch.Channel | None = None
        self.backlog: list[str] = []
        self._batch: list[str] = []
        self._injected = injected
        #: The ctl verbs this process answers (control/smtpverbs.py).
        self.handlers: dict[str, RemoteHandler] = {}

    def connect(self, sock: socket.socket) -> None:
        if self.channel is not None:
            self.channel.close()
        self.channel = ch.Channel(sock, self._on_frame, "queue channel")
        if self.backlog:
            pending, self.backlog = self.backlog, []
            self._send(pending)

    async def _on_frame(self, frame: ch.Frame) -> None:
        channel = self.channel
        done: ch.Frame
        if isinstance(frame, ch.Control):
            done = await answer(frame, self.handlers)
        elif not isinstance(frame, ch.Inject) or len(frame.fds) != 1:
            logger.warning("queue channel: unexpected %s", type(frame).__name__)
            return
        else:
            done = await self._injected(frame)
        if channel is not None and not channel.closed.is_set():
            channel.send(done)

    @property
    def pending(self) -> bool:
        """Commits not handed to a queue channel yet."""
        return bool(self._batch or self.backlog)

    def committed(self, envelope: Envelope) -> None:
        if not self._batch:
            asyncio.get_running_loop().call_soon(self._flush)
        self._batch.append(envelope.to_bytes().decode("utf-8", "surrogateescape"))

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        self._send(batch)

    def _send(self, envelopes: list[str]) -> None:
        if self.channel is not None and not self.channel.closed.is_set():
            try:
                self.channel.send(ch.Committed(tuple(envelopes)))
                return
            except ConnectionError:
                pass
        self.backlog += envelopes
        if len(self.backlog) > self.BACKLOG_MAX:
            logger.warning("queue channel down: %d commits not announced; the queue "
                           "process finds them on disk when it starts",
                           len(self.backlog) - self.BACKLOG_MAX)
            del self.backlog[:len(self.backlog) - self.BACKLOG_MAX]


async def queue_role(args: RoleArgs, config: Config) -> None:
    requests = Requests()
    stopping = asyncio.Event()
    daemon = Daemon(config, Path("."), paused=frozenset(args.paused))

    async def on_parent(frame: ch.Frame) -> None:
        if isinstance(frame, (ch.Delivered, ch.ControlDone)):
            requests.answer(frame.id, frame)
        elif isinstance(frame, ch.QueuePeer) and frame.fds and frame.peer == "mta":
            mta.connect(socket.socket(fileno=os.dup(frame.fds[0])))
        elif isinstance(frame, ch.QueuePeer) and frame.fds:
            smtp.listen(socket.socket(fileno=os.dup(frame.fds[0])), inject=frame.peer != "drain")

    mta = MtaLink(daemon.store.message_path)

    async def committed(frame: ch.Committed) -> None:
        if daemon.scheduler is None:
            return      # the scan about to run finds them: commits are durable first
        for text in frame.envelopes:
            try:
                envelope = Envelope.from_bytes(text.encode("utf-8", "surrogateescape"))
            except ValueError as e:
                logger.error("queue: a committed envelope does not parse: %s", e)
                continue
            # A frame that waited while this process restarted may name an
            # envelope the scan found (and perhaps delivered already).
            if envelope.id in daemon.store.evpids(envelope.msgid) or \
                    not daemon.store.message_path(envelope.msgid).exists():
                continue
            daemon.store.adopt(envelope)
            daemon.scheduler.schedule(envelope)

    smtp = SmtpLinks(committed)

    parent = ch.Channel(socket.socket(fileno=args.channel), on_parent, "parent channel")

    async def deliver(job: MdaJob, env: Envelope) -> None:
        try:
            answer = await ask(parent, requests, lambda rid: ch.Deliver(
                rid, env.msgid, job.user.uid, job.user.gid, job.user.username, job.user.home,
                job.path_template, job.sender, job.rcpt, job.dest,
                job.prefix.decode("utf-8", "surrogateescape"), job.name,
                job.method, job.argv, job.environ))
        except (ConnectionError, TimeoutError):
            raise TempFail(Reply(451, "4.3.0", "delivery not answered"),
                           "the parent did not answer the delivery") from None
        assert isinstance(answer, ch.Delivered)
        if answer.result == "ok":
            return
        kind = PermFail if answer.result == "permfail" else TempFail
        reply = Reply(550, "5.2.0", answer.reason) if kind is PermFail else \
            Reply(451, "4.2.0", answer.reason)
        raise kind(reply, answer.reason)

    daemon.tables = await open_tables(config, delivery_tables(config))     # as root
    become(args)
    for fd in args.peers:
        smtp.listen(socket.socket(fileno=fd))
    if args.mta >= 0:
        # Only then: without an action that relays there is no mta process
        # to wait for, and an mta envelope (queued under an older
        # configuration) is kept for want of an agent.
        mta.connect(socket.socket(fileno=args.mta))
        daemon.agents.register("mta", mta.relay)
        daemon.lmtp = mta.lmtp
    daemon.deliver = deliver
    daemon.store.display = args.spool
    envelopes = await daemon.store.open(clean_incoming=args.first)
    bouncer = Bouncer(daemon.store, config.hostname, smtp.send, config.bounce.warn_interval)
    daemon.scheduler = Scheduler(daemon.store, daemon.agents.deliver,
                                 bounce=bouncer.failed, warn=bouncer.delayed,
                                 delivered=bouncer.succeeded)
    for env in envelopes:
        daemon.scheduler.schedule(env)
    daemon.scheduler.paused.update(set(args.paused) & {"mda", "mta"})
    task = asyncio.create_task(daemon.scheduler.run())
    control = None
    if args.control >= 0:
        verbs = QueueVerbs(daemon.store, lambda: daemon.scheduler).verbs()
        verbs.update(ControlVerbs(daemon.store, lambda: daemon.scheduler, smtp,
                                  mta if args.mta >= 0 else None,
                                  parent_asker(parent, requests), daemon.update_table,
                                  frozenset(args.paused)).verbs())
        verbs.update(Enqueue(smtp.send, config.hostname, config.limits.max_message_size).verbs())
        control = ControlServer(socket.socket(fileno=args.control), verbs)
        await control.start()
    scrape = exporter.MetricsServer(lambda: exporter.queue_census(daemon.scheduler))
    if args.metrics >= 0:
        await scrape.start(socket.socket(fileno=args.metrics))
    parent.send(ch.Hello("queue", os.getpid()))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(daemon.update_tables()))
    await asyncio.wait([asyncio.ensure_future(parent.closed.wait()),
                        asyncio.ensure_future(stopping.wait())],
                       return_when=asyncio.FIRST_COMPLETED)
    if control is not None:
        await control.stop()
    await scrape.close()
    await daemon.scheduler.stop(timeout=STOP_GRACE)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    requests.fail_all()
    mta.close()
    smtp.close()
    daemon.scheduler = None
    await daemon.stop()


def parent_asker(parent: ch.Channel, requests: Requests) -> Callable[[str, tuple[str, ...]], Awaitable[Any]]:
    """Passes a ctl verb only the parent carries out (`stop`, `reload`, the
    logging verbs, its part of `show status`); the control server checked
    that root asked before it gets here."""

    async def passed_on(verb: str, args: tuple[str, ...]) -> Any:
        try:
            done = await ask(parent, requests, lambda rid: ch.Control(rid, verb, args))
        except (ConnectionError, TimeoutError):
            raise ControlError(wire.TEMPFAIL, f"{verb}: the parent did not answer") from None
        assert isinstance(done, ch.ControlDone)
        return result_of(done)

    return passed_on


async def mta_role(args: RoleArgs, config: Config) -> None:
    """Relays what the queue hands it (mta/agent.py): DNS, routes, the
    SMTP client.  It never sees the spool: each message arrives as an open
    descriptor."""
    stopping = asyncio.Event()
    queue: list[ch.Channel] = []

    async def on_parent(frame: ch.Frame) -> None:
        if isinstance(frame, ch.QueuePeer) and frame.fds and frame.peer == "queue":
            connect(socket.socket(fileno=os.dup(frame.fds[0])))

    async def on_queue(frame: ch.Frame) -> None:
        channel = queue[-1] if queue else None
        done: ch.Frame
        if isinstance(frame, ch.Control):
            done = await answer(frame, handlers)
        elif not isinstance(frame, (ch.Relay, ch.Lmtp)) or len(frame.fds) != 1:
            raise ch.ChannelError(f"unexpected {type(frame).__name__}")
        elif isinstance(frame, ch.Lmtp):
            done = await run_one(frame, lambda env, message: lmtp.deliver(
                LmtpJob(env, frame.destination, frame.rcpt_to), message))
        else:
            done = await run_one(frame, agent.relay)
            hoststats.note(_dest_domain(frame.envelope), done.result)
        if channel is not None and not channel.closed.is_set():
            channel.send(done)

    def connect(sock: socket.socket) -> None:
        for old in queue:
            old.close()
        queue[:] = [ch.Channel(sock, on_queue, "queue channel")]

    parent = ch.Channel(socket.socket(fileno=args.channel), on_parent, "parent channel")
    daemon = Daemon(config, Path("/nonexistent"))
    from postillion.mta.agent import MtaAgent, relay_tables   # only this process needs DNS
    daemon.tables = await open_tables(config, relay_tables(config))     # as root
    agent = MtaAgent(config, daemon.tables)
    lmtp = LmtpAgent(config.hostname)
    from postillion.control.mtaverbs import HostStats, mta_handlers
    hoststats = HostStats()
    handlers = mta_handlers(agent, hoststats, daemon.update_table)
    become(args)
    os.chdir("/")                    # nothing of the spool is ours to touch
    if args.mta >= 0:
        connect(socket.socket(fileno=args.mta))
    parent.send(ch.Hello("mta", os.getpid()))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(daemon.update_tables()))
    await asyncio.wait([asyncio.ensure_future(parent.closed.wait()),
                        asyncio.ensure_future(stopping.wait())],
                       return_when=asyncio.FIRST_COMPLETED)
    await agent.stop()
    await lmtp.stop()
    await close_tables(daemon.tables)


def _dest_domain(text: str) -> str:
    """The recipient domain of a Relay frame's envelope (for hoststats)."""
    try:
        return Envelope.from_bytes(text.encode("utf-8", "surrogateescape")).dest.rpartition("@")[2].lower()
    except ValueError:
        return "?"


def main(argv: list[str]) -> int:
    """`ROLE FD`: the role's name (for ps), and where its start is."""
    args, config = read_start(int(argv[1]))
    log.setup(foreground=args.foreground, verbose=args.verbose, announce=False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # ^C is the parent's to handle
    # Tables open before the drop to the queue user; their helpers never run as root.
    proc_backend.run_helpers_as((args.uid, args.gid))
    run = {"smtp": smtp_role, "queue": queue_role, "mta": mta_role}[args.role]
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(run(args, config))
    except StartupError as e:
        logger.error("%s process: %s", args.role, e)
        return 1
    return 0


if __name__ == "__main__":
    # Run as the imported module, not as __main__: the pickled RoleArgs
    # names postillion.daemon.roles, and there must be one such class.
    from postillion.daemon import roles
    sys.exit(roles.main(sys.argv[1:]))
