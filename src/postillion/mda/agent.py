"""The local delivery agent: runs one envelope's delivery as its user.

Never as root (a project rule, and OpenSMTPD's): when the daemon is root the
delivery runs in a worker process started with the recipient's uid/gid from
the userinfo table (`worker.py`); a userinfo that says uid 0 is refused
(temporarily, so the administrator can fix the table without losing mail).
When the daemon is not root it can only deliver as itself, in a thread off
the event loop.

Results: return = delivered; `TempFail` = retry later; `PermFail` = bounce.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

from postillion.errors import PermFail, Reply, TempFail
from postillion.mda import maildir, worker
from postillion.mda.format import FormatEnv, FormatError, expand
from postillion.table.values import Userinfo

WORKER_TIMEOUT = 300.0  # seconds a delivery may take before it counts as failed
MAX_WORKERS = 8         # deliveries in flight at once (mda limit max-session comes later)
WORKERS_PER_USER = 2    # long-lived workers per (uid, gid)
MAX_USER_POOLS = 32     # distinct (uid, gid) pools kept; the least recently used goes
INLINE_MAX = 1024 * 1024  # messages up to this size go through a long-lived worker


@dataclass(frozen=True, slots=True)
class MdaJob:
    """What one local delivery needs, resolved by the daemon's dispatcher."""

    message: Path           # the queued message file
    prefix: bytes           # Return-Path / Delivered-To lines, CRLF-terminated
    path_template: str | None  # action's maildir PATH (None: ~/Maildir)
    user: Userinfo
    sender: str
    rcpt: str
    dest: str


def temp(text: str) -> TempFail:
    return TempFail(Reply(451, "4.2.0", text), text)


def perm(text: str) -> PermFail:
    return PermFail(Reply(550, "5.2.0", text), text)


def maildir_path(job: MdaJob) -> Path:
    env = FormatEnv(sender=job.sender, rcpt=job.rcpt, dest=job.dest,
                    username=job.user.username, directory=job.user.home)
    try:
        path = Path(expand(job.path_template or "~/Maildir", env))
    except FormatError as e:
        raise perm(str(e)) from None
    if not path.is_absolute():
        raise perm(f"maildir path is not absolute: {path}")
    return path


class MdaAgent:
    """Runs local deliveries, each as its recipient (see the module doc).

    Under root: small messages go to long-lived workers per (uid, gid) --
    in a virtual setup usually one vmail uid, so one pool -- and large ones
    to a process forked per delivery.  `MAX_WORKERS` bounds deliveries in
    flight; the rest wait here, cancellable, so a stop is prompt.
    """

    def __init__(self) -> None:
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(["postillion.mda.worker"])
        self._oneshot: ProcessPoolExecutor | None = None
        self._pools: OrderedDict[tuple[int, int], ProcessPoolExecutor] = OrderedDict()
        self._slots = asyncio.Semaphore(MAX_WORKERS)

    def start(self) -> None:
        """Nothing to do until the first delivery: pools start on demand."""

    async def stop(self) -> None:
        pools = [*self._pools.values(), *([self._oneshot] if self._oneshot else [])]
        self._pools.clear()
        self._oneshot = None
        for pool in pools:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    async def deliver_maildir(self, job: MdaJob) -> None:
        """Deliver one message into the user's Maildir, as the user."""
        root = maildir_path(job)
        async with self._slots:
            if os.geteuid() != 0:
                # Not root: we can only deliver as ourselves; a thread will do.
                await asyncio.to_thread(_deliver_here, root, job)
                return
            if job.user.uid == 0 or job.user.gid == 0:
                raise temp(f"refusing to deliver as root for user {job.user.username}")
            try:
                size = job.message.stat().st_size
            except OSError as e:
                raise temp(f"queued message unreadable: {e.strerror or e}") from None
            if size <= INLINE_MAX:
                await self._inline(root, job)
            else:
                await self._forked(root, job)

    async def _inline(self, root: Path, job: MdaJob) -> None:
        try:
            data = await asyncio.to_thread(job.message.read_bytes)
        except OSError as e:
            raise temp(f"queued message unreadable: {e.strerror or e}") from None
        key = (job.user.uid, job.user.gid)
        pool = self._pool_for(key)
        await self._run(pool, key, worker.deliver_maildir_bytes, str(root), job.prefix, data)

    async def _forked(self, root: Path, job: MdaJob) -> None:
        if self._oneshot is None:
            self._oneshot = ProcessPoolExecutor(max_workers=MAX_WORKERS, mp_context=self._ctx,
                                                max_tasks_per_child=1)
        await self._run(self._oneshot, None, worker.deliver_maildir_as, job.user.uid,
                        job.user.gid, str(job.message), str(root), job.prefix)

    def _pool_for(self, key: tuple[int, int]) -> ProcessPoolExecutor:
        pool = self._pools.get(key)
        if pool is not None:
            self._pools.move_to_end(key)
            return pool
        if len(self._pools) >= MAX_USER_POOLS:
            _, old = self._pools.popitem(last=False)
            old.shutdown(wait=False)
        pool = ProcessPoolExecutor(max_workers=WORKERS_PER_USER, mp_context=self._ctx,
                                   initializer=worker.become, initargs=key)
        self._pools[key] = pool
        return pool

    async def _run(self, pool: ProcessPoolExecutor, key: tuple[int, int] | None,
                   fn: Callable[..., tuple[int, str]], *args: object) -> None:
        loop = asyncio.get_running_loop()
        try:
            status, reason = await asyncio.wait_for(
                loop.run_in_executor(pool, fn, *args), WORKER_TIMEOUT)
        except asyncio.TimeoutError:
            raise temp("delivery timed out") from None
        except BrokenProcessPool:
            # A worker died (or could not drop privileges): start afresh next time.
            if key is None:
                self._oneshot = None
            else:
                self._pools.pop(key, None)
            pool.shutdown(wait=False)
            raise temp("delivery worker died") from None
        if status == worker.EX_OK:
            return
        raise temp(reason) if status == worker.EX_TEMPFAIL else perm(reason)


def _deliver_here(root: Path, job: MdaJob) -> None:
    try:
        with open(job.message, "rb") as message:
            maildir.deliver(root, job.prefix, message)
    except OSError as e:
        text = f"{e.strerror or e}: {e.filename or root}"
        if e.errno in worker.PERMANENT_ERRNOS:
            raise perm(text) from None
        raise temp(text) from None
