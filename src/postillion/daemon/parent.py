"""The parent process: root's part of the daemon, and nothing that reads mail.

As OpenSMTPD's parent and Postfix's master: it locks the spool, checks the
configuration the way `postillion check` does, binds every listener, and
starts the roles (`roles.py`): one queue process, then `smtp workers` smtp
processes (one per core by default), all as the queue user (`_postillion`)
when started as root, else as whoever started it.  It parses no network
input: what reaches it are typed frames from its own roles (`channel.py`).
It answers three requests that need root -- deliver a message as a user (it
owns the per-uid delivery workers, `mda/agent.py`), read a user's
`.forward` (lookup/forward.py) and check a system account's password
(/etc/shadow) -- restarts a role that dies, with a
back-off, and owns the signals.  When it dies, every role and worker dies
with it (parent-death signal), and the kernel releases the spool lock.

SIGHUP reloads the configuration without a restart (`reload`, in
generations.py): a new generation of smtp processes on the kept and new
listening sockets, the old ones draining their sessions, the queue and mta
processes restarted.  What it knows of each role is in family.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from postillion import channel as ch
from postillion import sdnotify
from postillion.config.model import Config
from postillion.control.remote import answer as remote_answer
from postillion.control.remote import logging_handlers
from postillion.control.server import bind_control
from postillion.daemon import Daemon, StartupError, exporter, listen_error, lock_spool
from postillion.daemon.family import (RESTART_MAX, RESTART_MIN, RESTART_RESET, Role,
                                      needs_mta, own_spool, role_user)
from postillion.daemon.generations import Reloading
from postillion.daemon.reload import ConfigSource, ListenKey, listen_key
from postillion.daemon.roles import RoleArgs, write_start
from postillion.errors import MailError, PermFail
from postillion.lookup.auth import Authenticators
from postillion.lookup.forward import ForwardUnusable, read_forward
from postillion.mda.agent import MdaAgent, MdaJob
from postillion.paths import CONTROL_SOCKET
from postillion.queue.lock import SpoolLock
from postillion.queue.store import QueueStore
from postillion.smtp.server import Gate, bind
from postillion.table.backends import proc as proc_backend
from postillion.table.values import Userinfo

logger = logging.getLogger("postillion.parent")

#: Seconds a role has to say Hello after it is started.
START_TIMEOUT: Final = 60.0
#: Seconds a role has to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT: Final = 10.0


class Parent(Reloading):
    def __init__(self, config: Config, spool: Path, paused: frozenset[str] = frozenset(),
                 foreground: bool = False, verbose: bool = False,
                 source: ConfigSource | None = None) -> None:
        self.config = config
        #: Where `reload` reads the configuration again (None: it cannot).
        self.source = source
        self.spool = spool.resolve()
        #: Subsystems paused (`run -P`, `ctl pause`): a role restarted
        #: starts with them paused, so a pause outlives the process it was
        #: told to (not the daemon).
        self.paused = set(paused)
        self.foreground, self.verbose = foreground, verbose
        self.lock = SpoolLock(self.spool)
        self.store = QueueStore(self.spool)      # paths only: the queue process owns it
        self.mda = MdaAgent(config.mda)
        self.authenticators = Authenticators(config.limits)
        self.sockets: list[list[socket.socket]] = []
        #: control.sock, bound here and served by the queue process.
        self.control: socket.socket | None = None
        #: What each of `sockets` is bound to: a reload keeps those it finds again.
        self.listen_keys: list[ListenKey] = []
        #: Session counts per listener, across every smtp process (anvil).
        self.gates = [Gate(config.limits) for _ in config.listeners]
        self.queue = Role("queue", 0)
        self.smtp: list[Role] = []
        #: The mta process, when an action relays or delivers over LMTP.
        self.mta: Role | None = Role("mta", 0) if needs_mta(config) else None
        self.uid = self.gid = -1
        #: `metrics listen on`: its socket (for the queue process) and the
        #: directory of every role's metrics files (daemon/exporter.py).
        self.metrics: socket.socket | None = None
        self.metrics_dir: Path | None = None
        #: smtp processes of older generations, finishing their sessions.
        self.draining: list[Role] = []
        #: Told "reloading" when a reload starts and "ready" when it ends
        #: (applied or refused): where sd_notify's RELOADING=1/READY=1 go.
        self.announce: Callable[[str], None] = lambda state: None
        #: Held by the start and by each reload: one at a time.
        self._reloading = asyncio.Lock()
        self._retired_auth: list[Authenticators] = []
        self._stopping = asyncio.Event()
        #: Set to stop the daemon (SIGTERM, SIGINT, `ctl stop`).
        self.shutdown = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        #: systemd's line (Type=notify); taking NOTIFY_SOCKET out of the
        #: environment here means no role or worker can speak on it.
        self.notifier = sdnotify.Notifier.from_environ()
        self.announce = self._announce
        self._reloads: set[asyncio.Task[Any]] = set()
        self.started = time.monotonic()

    # -- start ----------------------------------------------------------------

    async def start(self) -> None:
        lock_spool(self.lock)       # before anything touches the queue or a port
        try:
            async with self._reloading:
                await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        self.uid, self.gid = role_user(self.config)
        # A table helper this probe starts runs as the queue user, as the roles' do.
        proc_backend.run_helpers_as((self.uid, self.gid))
        # What check checks, here too: the roles open the same tables.
        probe = Daemon(self.config, self.spool)
        try:
            listeners = await probe.prepare()
        finally:
            await probe.stop()
        try:
            own_spool(self.spool, self.uid, self.gid)
        except OSError as e:
            raise StartupError(f"queue {self.spool}: {e.strerror or e}") from None
        try:
            self.control = bind_control(self.spool, self.uid, self.gid)
        except OSError as e:
            raise StartupError(f"control socket in {self.spool}: {e.strerror or e}") from None
        for listener in listeners:
            decl = listener.decl
            try:
                self.sockets.append(bind(decl, listener.hosts))
            except OSError as e:
                raise listen_error(decl, e) from None
            self.listen_keys.append(listen_key(decl, listener.hosts))
        self._prepare_metrics()
        self.smtp = [Role("smtp", i) for i in range(self.config.processes.effective_smtp_workers())]
        pairs = [socket.socketpair() for _ in self.smtp]
        for role, (queue_end, smtp_end) in zip(self.smtp, pairs):
            role.peer = smtp_end
        mta_pair = socket.socketpair() if self.mta is not None else None
        self._spawn(self.queue, [q for q, _ in pairs], first=True,
                    mta=mta_pair[0] if mta_pair else None)
        await self._wait_hello(self.queue)
        if self.mta is not None and mta_pair is not None:
            self._spawn(self.mta, [], mta=mta_pair[1])
            await self._wait_hello(self.mta)
        for role in self.smtp:
            assert role.peer is not None
            peer, role.peer = role.peer, None
            self._spawn(role, [peer])
        for role in self.smtp:
            await self._wait_hello(role)
        for role in self.roles():
            self._watch(role)
        logger.info("postillion ready: %d smtp process(es), queue process%s, as uid %d",
                    len(self.smtp), ", mta process" if self.mta is not None else "", self.uid)

    def _prepare_metrics(self) -> None:
        """`metrics listen on`: bound here, with the listeners; the roles
        count into files under the spool, the queue process answers."""
        if self.config.metrics is not None:
            self.metrics = exporter.bind(self.config.metrics)
            self.metrics_dir = exporter.prepare_dir(self.spool, self.uid, self.gid)

    def roles(self) -> list[Role]:
        return [self.queue, *self.smtp, *([self.mta] if self.mta is not None else [])]

    async def _wait_hello(self, role: Role) -> None:
        assert role.channel is not None
        hello = asyncio.ensure_future(role.hello.wait())
        closed = asyncio.ensure_future(role.channel.closed.wait())
        done, _ = await asyncio.wait([hello, closed], timeout=START_TIMEOUT,
                                     return_when=asyncio.FIRST_COMPLETED)
        hello.cancel()
        closed.cancel()
        if not role.hello.is_set():
            raise StartupError(f"the {role.label} did not start (see the lines above)")

    def _spawn(self, role: Role, peers: list[socket.socket], first: bool = False,
               mta: socket.socket | None = None) -> None:
        """Exec one role with its descriptors; the parent keeps its channel end.
        `peers`: channels between the queue and the smtp processes; `mta`:
        the one between the queue and the mta process."""
        ours, theirs = socket.socketpair()
        listeners: list[tuple[int, int]] = []
        if role.name == "smtp":
            listeners = [(i, s.fileno()) for i, socks in enumerate(self.sockets) for s in socks]
            role.gates = self.gates
        control = self.control.fileno() if role.name == "queue" and self.control is not None else -1
        args = RoleArgs(role=role.name, index=role.index, parent=os.getpid(),
                        channel=theirs.fileno(), spool=str(self.spool),
                        uid=self.uid, gid=self.gid, foreground=self.foreground,
                        verbose=self.verbose, paused=tuple(sorted(self.paused)), first=first,
                        peers=tuple(p.fileno() for p in peers), listeners=tuple(listeners),
                        mta=mta.fileno() if mta is not None else -1, control=control,
                        metrics=self.metrics.fileno()
                        if self.metrics is not None and role.name == "queue" else -1)
        start = write_start(args, self.config)
        fds = (theirs.fileno(), start, *args.peers, *(fd for _, fd in listeners),
               *([mta.fileno()] if mta is not None else []), *([control] if control >= 0 else []),
               *([args.metrics] if args.metrics >= 0 else []))
        try:
            # Started from the event loop's thread, which lives as long as
            # the parent: the parent-death signal follows the forking thread.
            role.proc = subprocess.Popen(
                [sys.executable, "-m", "postillion.daemon.roles", role.name, str(start)],
                pass_fds=fds, cwd="/", stdin=subprocess.DEVNULL,
                env=exporter.role_environ(self.metrics_dir))
        finally:
            theirs.close()
            os.close(start)
            for peer in peers:
                peer.close()
            if mta is not None:
                mta.close()
        role.started = time.monotonic()
        role.hello = asyncio.Event()
        role.channel = ch.Channel(ours, lambda frame, r=role: self._on_frame(r, frame),
                                  f"{role.name} channel")

    # -- what the roles ask ----------------------------------------------------

    async def _on_frame(self, role: Role, frame: ch.Frame) -> None:
        if isinstance(frame, ch.Hello) and frame.role == role.name:
            role.hello.set()
        elif isinstance(frame, ch.Deliver) and role.name == "queue":
            result, reason = await self._deliver(frame)
            self._answer(role, ch.Delivered(frame.id, result, reason))
        elif isinstance(frame, ch.Admit) and role.name == "smtp" and frame.listener < len(role.gates):
            ok = role.gates[frame.listener].take(frame.ip)
            if ok:
                role.admitted[(frame.listener, frame.ip)] += 1
            self._answer(role, ch.Admitted(frame.id, int(ok)))
        elif isinstance(frame, ch.Left) and role.name == "smtp":
            self._left(role, frame.listener, frame.ip)
        elif isinstance(frame, ch.Forward) and role.name == "smtp":
            self._answer(role, await self._forward(frame))
        elif isinstance(frame, ch.ControlDone) and role.name == "smtp" and frame.id == 0:
            pass                 # an smtp process took `pause|resume smtp` (above)
        elif isinstance(frame, ch.Control) and role.name == "queue" and frame.verb == "reload":
            self._reload_asked(role, frame.id)
        elif isinstance(frame, ch.Control) and role.name == "queue":
            self._answer(role, await self._control(frame))
        elif isinstance(frame, ch.AuthCheck) and role.name == "smtp":
            result = await self.authenticators.get(None).check(frame.user, frame.password)
            self._answer(role, ch.AuthAnswer(frame.id, result.value))
        else:
            # A role that sends what it never should is not trusted again.
            logger.error("%s sent %s; stopping it", role.label, type(frame).__name__)
            self._kill(role)

    async def _control(self, frame: ch.Control) -> ch.ControlDone:
        """The ctl verbs only the parent can carry out, passed on by the
        queue process once it checked that root asked."""
        if frame.verb == "stop":
            logger.info("stop requested by postillion ctl")
            asyncio.get_running_loop().call_later(0.2, self.shutdown.set)   # answer first
            return ch.ControlDone(frame.id, "", json.dumps({"stopping": True}))
        if frame.verb == "show status":
            return ch.ControlDone(frame.id, "", json.dumps(self.status()))
        if frame.verb == "set paused" and len(frame.args) == 2 and \
                frame.args[0] in ("mda", "mta", "smtp") and frame.args[1] in ("yes", "no"):
            (self.paused.add if frame.args[1] == "yes" else self.paused.discard)(frame.args[0])
            if frame.args[0] == "smtp":
                # Every smtp process hears it from here too: one restarted
                # with the queue process may have no queue channel yet.
                verb = "pause smtp" if frame.args[1] == "yes" else "resume smtp"
                for role in self.smtp:
                    self._answer(role, ch.Control(0, verb, ()))
            return ch.ControlDone(frame.id, "", json.dumps(sorted(self.paused)))
        return await remote_answer(frame, logging_handlers())

    def status(self) -> dict[str, object]:
        """The parent's part of `show status`: uptime and the roles' pids."""
        def pid(role: Role | None) -> int | None:
            return role.proc.pid if role is not None and role.proc is not None and \
                role.proc.poll() is None else None
        return {"pid": os.getpid(), "uptime": int(time.monotonic() - self.started),
                "started": int(time.time() - (time.monotonic() - self.started)),
                "processes": {"queue": pid(self.queue), "mta": pid(self.mta),
                              "smtp": [pid(r) for r in self.smtp]}}

    def _left(self, role: Role, listener: int, ip: str) -> None:
        key = (listener, ip)
        if role.admitted[key] <= 0:
            return               # not ours to give back: ignore, never go negative
        role.admitted[key] -= 1
        if role.admitted[key] == 0:
            del role.admitted[key]
        role.gates[listener].leave(ip)

    def _forget_sessions(self, role: Role) -> None:
        """A role that died holds no session any more."""
        for (listener, ip), count in list(role.admitted.items()):
            for _ in range(count):
                self._left(role, listener, ip)

    def _answer(self, role: Role, frame: ch.Frame) -> None:
        if role.channel is not None and not role.channel.closed.is_set():
            role.channel.send(frame)

    async def _forward(self, frame: ch.Forward) -> ch.ForwardText:
        """A user's .forward, read as root with its checks (lookup/forward.py);
        never root's own (uid 0: its targets would run as root)."""
        if frame.uid == 0 or not frame.home.startswith("/"):
            return ch.ForwardText(frame.id, "none", "")
        try:
            text = await asyncio.to_thread(read_forward, frame.home, frame.uid)
        except ForwardUnusable as e:
            return ch.ForwardText(frame.id, "tempfail", e.reason)
        return ch.ForwardText(frame.id, "none", "") if text is None else \
            ch.ForwardText(frame.id, "found", text)

    async def _deliver(self, frame: ch.Deliver) -> tuple[str, str]:
        user = Userinfo(frame.username, frame.uid, frame.gid, frame.home)
        job = MdaJob(message=self.store.message_path(frame.msgid),
                     prefix=frame.prefix.encode("utf-8", "surrogateescape"),
                     path_template=frame.path, user=user, sender=frame.sender,
                     rcpt=frame.rcpt, dest=frame.dest, name=frame.name,
                     method=frame.method, argv=frame.argv, environ=frame.environ)
        try:
            await self.mda.deliver(job)
        except MailError as e:
            return ("permfail" if isinstance(e, PermFail) else "tempfail"), e.reason
        return "ok", "Delivered"

    # -- watching and restarting ---------------------------------------------

    def _watch(self, role: Role) -> None:
        task = asyncio.ensure_future(self._watcher(role))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watcher(self, role: Role) -> None:
        while not self._stopping.is_set():
            assert role.channel is not None and role.proc is not None
            await role.channel.closed.wait()
            status = await self._reap(role)
            self._forget_sessions(role)
            exporter.process_gone(self.metrics_dir, role.proc.pid)
            if self._stopping.is_set():
                return
            if role.retired:
                self._gone(role, status)
                return
            lived = time.monotonic() - role.started
            if lived >= RESTART_RESET:
                role.backoff = RESTART_MIN
            delay = role.backoff                      # 1 s, then 2, 4 ... while it dies young
            role.backoff = min(RESTART_MAX, role.backoff * 2)
            logger.warning("%s exited (%s); restarting it in %gs", role.label, status, delay)
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
                return
            except TimeoutError:
                pass
            if role.retired:           # a reload replaced it meanwhile
                self._gone(role, status)
                return
            self._restart(role)
            try:
                await self._wait_hello(role)
            except StartupError as e:
                logger.error("%s", e)
                self._kill(role)

    def _restart(self, role: Role) -> None:
        if role.name == "mta":
            queue_end, mta_end = socket.socketpair()
            try:
                self._answer(self.queue, ch.QueuePeer("mta", fds=(queue_end.fileno(),)))
            finally:
                queue_end.close()
            self._spawn(role, [], mta=mta_end)
            return
        if role.name == "smtp":
            queue_end, smtp_end = socket.socketpair()
            try:
                self._answer(self.queue, ch.QueuePeer("smtp", fds=(queue_end.fileno(),)))
            finally:
                queue_end.close()
            self._spawn(role, [smtp_end])
            return
        pairs = [socket.socketpair() for _ in self.smtp]
        for smtp_role, (_, smtp_end) in zip(self.smtp, pairs):
            try:
                self._answer(smtp_role, ch.QueuePeer("queue", fds=(smtp_end.fileno(),)))
            finally:
                smtp_end.close()
        to_mta = None
        if self.mta is not None:
            for_mta, to_mta = socket.socketpair()
            try:
                self._answer(self.mta, ch.QueuePeer("queue", fds=(for_mta.fileno(),)))
            finally:
                for_mta.close()
        # Not the first start: smtp processes are receiving into incoming/.
        self._spawn(role, [q for q, _ in pairs], first=False, mta=to_mta)
        self._link_draining(role)

    async def _reap(self, role: Role) -> str:
        assert role.proc is not None
        proc = role.proc
        try:
            code = await asyncio.wait_for(asyncio.to_thread(proc.wait), STOP_TIMEOUT)
        except TimeoutError:
            proc.kill()
            code = await asyncio.to_thread(proc.wait)
        return f"killed by signal {-code}" if code < 0 else f"status {code}"

    def _kill(self, role: Role) -> None:
        if role.channel is not None:
            role.channel.close()
        if role.proc is not None and role.proc.poll() is None:
            role.proc.kill()

    # -- stop -----------------------------------------------------------------

    async def _terminate(self, roles: list[Role]) -> None:
        live = [r for r in roles if r.proc is not None and r.proc.poll() is None]
        for role in live:
            assert role.proc is not None
            role.proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*(self._reap(r) for r in live), return_exceptions=True)
        for role in roles:
            if role.channel is not None:
                role.channel.close()

    async def stop(self) -> None:
        self._stopping.set()
        for task in list(self._reloads):   # a reload half done: what it started goes too
            if task is not asyncio.current_task():
                task.cancel()
        await asyncio.gather(*(t for t in self._reloads if t is not asyncio.current_task()),
                             return_exceptions=True)
        await self._terminate([*self.smtp, *self.draining])     # no new mail first...
        await self._terminate([self.queue])  # ...then the deliveries it asked for
        if self.mta is not None:
            await self._terminate([self.mta])
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.mda.stop()
        self.authenticators.close()
        for authenticators in self._retired_auth:
            authenticators.close()
        for socks in self.sockets:
            for sock in socks:
                sock.close()
        self.sockets = []
        if self.control is not None:
            self.control.close()
            self.control = None
            (self.spool / CONTROL_SOCKET).unlink(missing_ok=True)
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        self.lock.release()

    async def serve(self) -> None:
        """Run until SIGTERM or SIGINT; SIGHUP reloads the configuration."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.shutdown.set)
        loop.add_signal_handler(signal.SIGINT, self.shutdown.set)
        loop.add_signal_handler(signal.SIGHUP, self._hangup)
        try:
            await self.start()
        except StartupError as e:
            self.notifier.status(f"failed to start: {e}")
            raise
        self.notifier.ready(f"ready: {len(self.smtp)} smtp process(es)")
        try:
            await self.shutdown.wait()
        finally:
            logger.info("postillion stopping")
            self.notifier.stopping()
            await self.stop()
