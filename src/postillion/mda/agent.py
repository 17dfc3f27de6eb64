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
from dataclasses import dataclass
from pathlib import Path

from postillion.errors import PermFail, Reply, TempFail
from postillion.mda import maildir, worker
from postillion.mda.format import FormatEnv, FormatError, expand
from postillion.table.values import Userinfo

WORKER_TIMEOUT = 300.0  # seconds a delivery may take before it counts as failed
MAX_WORKERS = 8         # deliveries in flight at once (mda limit max-session comes later)


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
    """Runs local deliveries, each as its recipient (see the module doc)."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        """Make the pool; its fork server is exec'd on the first delivery."""
        if os.geteuid() == 0 and self._pool is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["postillion.mda.worker"])
            self._pool = ProcessPoolExecutor(max_workers=MAX_WORKERS, mp_context=ctx,
                                             max_tasks_per_child=1)

    async def stop(self) -> None:
        if self._pool is not None:
            await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)
            self._pool = None

    async def deliver_maildir(self, job: MdaJob) -> None:
        """Deliver one message into the user's Maildir, as the user."""
        root = maildir_path(job)
        if os.geteuid() != 0:
            # Not root: we can only deliver as ourselves; a thread will do.
            await asyncio.to_thread(_deliver_here, root, job)
            return
        if job.user.uid == 0 or job.user.gid == 0:
            raise temp(f"refusing to deliver as root for user {job.user.username}")
        self.start()
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        try:
            status, reason = await asyncio.wait_for(loop.run_in_executor(
                self._pool, worker.deliver_maildir_as, job.user.uid, job.user.gid,
                str(job.message), str(root), job.prefix), WORKER_TIMEOUT)
        except asyncio.TimeoutError:
            raise temp("delivery timed out") from None
        except BrokenProcessPool:
            self._pool = None
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
