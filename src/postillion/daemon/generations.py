"""Reloading without a restart: the parent's part that makes a new
generation of processes (docs/configuration.md, Reloading).

SIGHUP or `postillion ctl reload`: the configuration is read again and
checked as `run` checks it; refused, nothing changes.  Applied: a new
generation of smtp processes on the kept and new listening sockets, the
old ones draining their open sessions under the configuration they began
with, the queue and mta processes restarted on the new one.  The pure
parts (which socket is kept, what may not change) are in reload.py.

A mixin of Parent (parent.py), whose state it works on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Callable
from typing import Final

from postillion import channel as ch
from postillion.config.model import Config
from postillion.daemon import Daemon, StartupError
from postillion.daemon.family import Role, needs_mta
from postillion.daemon.reload import ConfigSource, ReloadRefused, bind_again, fixed_options, \
    listen_key, located
from postillion.lookup.auth import Authenticators
from postillion.mda.agent import MdaAgent
from postillion.smtp.server import Gate

logger = logging.getLogger("postillion.parent")

#: A draining smtp process (after a reload) has its sessions' own bound,
#: the whole-session limit (Limits.session_timeout), plus this, before it
#: cuts what is left.
DRAIN_SLACK: Final = 30.0


class Reloading:
    """Parent's reload: `reload()` and the steps of a generation swap."""

    def _hangup(self, decided: Callable[[str | None], None] | None = None) -> None:
        async def reload() -> None:
            await self.reload(decided)
        task = asyncio.ensure_future(reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _reload_asked(self, queue: Role, rid: int) -> None:
        """`postillion ctl reload`: the answer goes out as soon as the outcome
        is known -- a good reload replaces the queue process that asked."""
        logger.info("reload requested by postillion ctl")

        def decided(outcome: str | None) -> None:
            self._answer(queue, ch.ControlDone(rid, "", json.dumps({"reloaded": True}))
                         if outcome is None else ch.ControlDone(rid, "dataerr", json.dumps(outcome)))
        self._hangup(decided)

    def _announce(self, state: str) -> None:
        """Reload's states, told to systemd (RELOADING=1, then READY=1)."""
        if state == "reloading":
            self.notifier.reloading()
        else:
            self.notifier.ready(f"ready: {len(self.smtp)} smtp process(es)")

    # -- reload ---------------------------------------------------------------

    async def reload(self, decided: Callable[[str | None], None] | None = None) -> str | None:
        """Read the configuration again and apply it without a restart, as
        `postfix reload` (docs/configuration.md, Reloading).  None when it
        is applied; else why it is refused (one line naming file:line), the
        running configuration left as it was.  One reload at a time: a
        second waits for the first (and for the start).

        `decided` is told the outcome as soon as it is known: a refusal, or
        None once the new smtp processes are up -- before the queue process
        is replaced, so a request that came from the queue process can
        still be answered on its channel."""
        def tell(outcome: str | None) -> None:
            if decided is not None:
                try:
                    decided(outcome)
                except Exception:
                    logger.exception("reload: telling the outcome failed")

        error: str | None = None
        # A stop cancels a reload half done (and what it started goes too).
        task = asyncio.current_task()
        if task is not None:
            self._reloads.add(task)
        try:
            async with self._reloading:
                if self._stopping.is_set():
                    error = "the daemon is stopping"
                elif self.source is None:
                    error = "no configuration file to reload from"
                else:
                    self.announce("reloading")
                    try:
                        await self._reload(self.source, tell)
                    except ReloadRefused as e:
                        logger.error("reload: refused: %s", e)
                        error = str(e)
                    finally:
                        self.announce("ready")
                    if error is None:
                        return None
        finally:
            if task is not None:
                self._reloads.discard(task)
        tell(error)
        return error

    async def _reload(self, source: ConfigSource, decided: Callable[[str | None], None]) -> None:
        config = await asyncio.to_thread(source.load)
        if (problem := fixed_options(self.config, config, source.path)) is not None:
            raise ReloadRefused(problem)
        # What the start checks, on the new configuration: every table
        # opened and verified, every certificate and AUTH table loaded.
        probe = Daemon(config, self.spool)
        try:
            listeners = await probe.prepare()
        except StartupError as e:
            raise ReloadRefused(located(str(e), config, source.path)) from None
        finally:
            await probe.stop()
        keys = [listen_key(listener.decl, listener.hosts) for listener in listeners]
        sockets, fresh = bind_again(dict(zip(self.listen_keys, self.sockets)), listeners, keys)
        old = (self.config, self.sockets, self.listen_keys, self.gates)
        gates = dict(zip(self.listen_keys, self.gates))
        self.config, self.sockets, self.listen_keys = config, sockets, keys
        self.gates = [gates.get(key) or Gate(config.limits) for key in keys]
        generation = [Role("smtp", i) for i in range(config.processes.effective_smtp_workers())]
        pairs = [socket.socketpair() for _ in generation]
        try:
            for role, (_, smtp_end) in zip(generation, pairs):
                self._spawn(role, [smtp_end])
            for role in generation:
                await self._wait_hello(role)
        except BaseException as e:
            # Nothing of the running daemon was touched yet: put it back.
            self.config, self.sockets, self.listen_keys, self.gates = old
            for role in generation:
                role.retired = True
                self._kill(role)
            await asyncio.gather(*(self._reap(r) for r in generation if r.proc is not None),
                                 return_exceptions=True)
            for queue_end, _ in pairs:
                queue_end.close()
            for socks in fresh:
                for sock in socks:
                    sock.close()
            if not isinstance(e, (StartupError, OSError)):
                raise               # cancelled: the daemon is stopping
            text = e.strerror if isinstance(e, OSError) else str(e)
            raise ReloadRefused(located(f"{text}", None, source.path)) from None
        # The swap: from here on the new configuration runs.
        decided(None)
        for gate in self.gates:
            gate.limits = config.limits       # kept counts, new limits
        old_smtp, self.smtp = self.smtp, generation
        drain = ch.Drain(int(old[0].limits.session_timeout + DRAIN_SLACK))
        for role in old_smtp:
            role.retired = True
            self.draining.append(role)
            self._answer(role, drain)
        for role in generation:
            self._watch(role)
        kept = {id(sock) for socks in sockets for sock in socks}
        for socks in old[1]:
            for sock in socks:
                if id(sock) not in kept:
                    sock.close()        # the draining processes close their copies
        await self._replace_queue_and_mta(config, [q for q, _ in pairs])
        if config.limits != old[0].limits:
            self._retired_auth.append(self.authenticators)
            self.authenticators = Authenticators(config.limits)
        logger.info("reload: configuration %s applied: %d smtp process(es), %d draining",
                    source.path, len(self.smtp), len(self.draining))

    async def _replace_queue_and_mta(self, config: Config, smtp_ends: list[socket.socket]) -> None:
        """The queue (and mta) process again, on the new configuration: the
        old one stops as at SIGTERM (deliveries in flight get their grace;
        what was not answered stays in the spool), the new one recovers the
        spool, takes the new generation's commits (`smtp_ends`) and the
        draining processes'.  An envelope may be delivered twice, never lost."""
        old_queue, old_mta = self.queue, self.mta
        for role in (old_queue, old_mta):
            if role is not None:
                role.retired = True
        await self._terminate([old_queue])
        if old_mta is not None:
            await self._terminate([old_mta])
        if config.mda != self.mda.options:
            old_mda, self.mda = self.mda, MdaAgent(config.mda)
            await old_mda.stop()
        self.queue = Role("queue", 0)
        self.mta = Role("mta", 0) if needs_mta(config) else None
        mta_pair = socket.socketpair() if self.mta is not None else None
        self._spawn(self.queue, smtp_ends, first=False,
                    mta=mta_pair[0] if mta_pair is not None else None)
        self._link_draining(self.queue)
        if self.mta is not None and mta_pair is not None:
            self._spawn(self.mta, [], mta=mta_pair[1])
        for role in [self.queue, *([self.mta] if self.mta is not None else [])]:
            try:
                await self._wait_hello(role)
            except StartupError as e:
                # Past the swap there is no way back: its watcher restarts it.
                logger.error("reload: %s", e)
                self._kill(role)
            self._watch(role)

    def _link_draining(self, queue: Role) -> None:
        """A channel from each draining smtp process to this queue process:
        their last commits are announced to it (they get no Inject)."""
        for role in self.draining:
            if role.channel is None or role.channel.closed.is_set():
                continue
            queue_end, smtp_end = socket.socketpair()
            try:
                self._answer(role, ch.QueuePeer("queue", fds=(smtp_end.fileno(),)))
                self._answer(queue, ch.QueuePeer("drain", fds=(queue_end.fileno(),)))
            finally:
                queue_end.close()
                smtp_end.close()

    def _gone(self, role: Role, status: str) -> None:
        """A process a reload replaced has exited: nothing to restart."""
        if role in self.draining:
            self.draining.remove(role)
            logger.info("%s drained and exited (%s)", role.label, status)
