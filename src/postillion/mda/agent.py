"""The local delivery agent: runs one envelope's delivery as its user.

Never as root (a project rule, and OpenSMTPD's): when the daemon is root the
delivery runs in a worker process (`worker.py`) that dropped to the
recipient's uid/gid from the userinfo table; a userinfo that says uid 0 is
refused (temporarily, so the administrator can fix the table without losing
mail).  When the daemon is not root it can only deliver as itself, in a
thread off the event loop.

Workers are long-lived, a few per (uid, gid) -- in a virtual setup usually
one vmail uid, so one pool -- and each serves one job at a time over its own
socketpair.  The daemon opens the queued message and the Maildir's anchor
(see `worker.py`) and passes the descriptors: a worker never gets the spool.

Results: return = delivered; `TempFail` = retry later; `PermFail` = bounce.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import subprocess
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from postillion.errors import PermFail, Reply, TempFail
from postillion.mda import maildir, worker
from postillion.mda.format import FormatEnv, FormatError, expand
from postillion.table.values import Userinfo

logger = logging.getLogger("postillion.mda")

WORKER_TIMEOUT: Final = 300.0  # seconds a delivery may take before it counts as failed
MAX_WORKERS: Final = 8         # deliveries in flight at once (mda limit max-session comes later)
WORKERS_PER_USER: Final = 2    # long-lived workers per (uid, gid)
MAX_USER_POOLS: Final = 32     # distinct (uid, gid) pools kept; the least recently used goes
RETIRE_GRACE: Final = 2.0      # seconds a retired worker gets to exit before SIGKILL


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
    name: str | None = None  # the envelope's Maildir file name (maildir.stable_name)


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


def open_anchor(path: Path) -> tuple[int, str]:
    """Open the deepest directory of `path` whose every component is a
    directory owned by root; return it (O_PATH) and the rest, relative.

    Only root-owned directories are resolved here, as root: nothing the
    recipient could replace by a link.  The worker resolves the rest."""
    anchor = Path("/")
    rest = list(path.parts[1:])
    while rest:
        candidate = anchor / rest[0]
        try:
            st = os.lstat(candidate)
        except OSError:
            break
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
            break
        anchor = candidate
        rest.pop(0)
    fd = os.open(anchor, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    return fd, str(Path(*rest)) if rest else "."


class Worker:
    """One worker process and its end of the channel."""

    def __init__(self, uid: int, gid: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # Exec'd, not forked: the daemon has threads, and a fresh
            # interpreter inherits none of their locks.  Started from the
            # event loop's thread, which lives as long as the daemon: the
            # parent-death signal follows the thread that forked.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "postillion.mda.worker", str(theirs.fileno()),
                 str(os.getpid()), str(uid), str(gid)],
                pass_fds=(theirs.fileno(),), cwd="/", stdin=subprocess.DEVNULL,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONSAFEPATH": "1"})
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self.channel = ours

    async def run(self, root: str, prefix: bytes, fds: list[int],
                  name: str | None = None) -> tuple[int, str]:
        """Send one job, wait for its answer; OSError/EOFError if the worker is gone."""
        loop = asyncio.get_running_loop()
        # One job at a time per worker: the send buffer is empty, so this
        # small frame never blocks.
        socket.send_fds(self.channel, [worker.encode_job(root, prefix, name)], fds)
        data = await loop.sock_recv(self.channel, worker.MAX_FRAME)
        if not data:
            raise EOFError("delivery worker died")
        answer = json.loads(data)
        return int(answer["status"]), str(answer["reason"])

    async def retire(self) -> None:
        """Close the channel (the worker exits on EOF) and reap it."""
        self.channel.close()
        try:
            await asyncio.to_thread(self.proc.wait, RETIRE_GRACE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)


class UserPool:
    """Up to WORKERS_PER_USER workers of one (uid, gid), started on demand."""

    def __init__(self, uid: int, gid: int) -> None:
        self.uid, self.gid = uid, gid
        self.idle: list[Worker] = []
        self.busy: set[Worker] = set()
        self.closed = False
        self._free = asyncio.Condition()

    async def acquire(self) -> Worker:
        async with self._free:
            while not self.idle and len(self.busy) >= WORKERS_PER_USER:
                await self._free.wait()
            w = self.idle.pop() if self.idle else Worker(self.uid, self.gid)
            self.busy.add(w)
            return w

    async def release(self, w: Worker, healthy: bool) -> None:
        self.busy.discard(w)
        if healthy and not self.closed:
            self.idle.append(w)
        else:
            if not healthy:
                w.proc.kill()
            await w.retire()
        async with self._free:
            self._free.notify()

    async def close(self) -> None:
        """Retire the idle workers now, the busy ones when their job ends."""
        self.closed = True
        workers, self.idle = self.idle, []
        await asyncio.gather(*(w.retire() for w in workers), return_exceptions=True)


class MdaAgent:
    """Runs local deliveries, each as its recipient (see the module doc).

    `MAX_WORKERS` bounds deliveries in flight; the rest wait here,
    cancellable, so a stop is prompt.
    """

    def __init__(self) -> None:
        self._pools: OrderedDict[tuple[int, int], UserPool] = OrderedDict()
        self._slots = asyncio.Semaphore(MAX_WORKERS)

    def start(self) -> None:
        """Nothing to do until the first delivery: pools start on demand."""

    async def stop(self) -> None:
        pools = list(self._pools.values())
        self._pools.clear()
        await asyncio.gather(*(p.close() for p in pools), return_exceptions=True)

    def worker_pids(self) -> list[int]:
        """The running workers' pids (for tests and `ctl`)."""
        return [w.proc.pid for p in self._pools.values() for w in (*p.idle, *p.busy)]

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
            fds, rel = await asyncio.to_thread(_open_job, job.message, root)
            try:
                await self._run(job.user, rel, job.prefix, fds, job.name)
            finally:
                for fd in fds:
                    os.close(fd)

    async def _run(self, user: Userinfo, rel: str, prefix: bytes, fds: list[int],
                   name: str | None = None) -> None:
        pool = self._pool_for((user.uid, user.gid))
        try:
            w = await pool.acquire()
        except OSError as e:
            raise temp(f"cannot start a delivery worker: {e.strerror or e}") from None
        healthy = False
        try:
            async with asyncio.timeout(WORKER_TIMEOUT):
                status, reason = await w.run(rel, prefix, fds, name)
            healthy = True
        except TimeoutError:
            raise temp("delivery timed out") from None
        except (OSError, EOFError, ValueError, KeyError):
            # A worker died (or could not drop privileges): start afresh next time.
            raise temp("delivery worker died") from None
        finally:
            await pool.release(w, healthy)
        if status == worker.EX_OK:
            return
        raise temp(reason) if status == worker.EX_TEMPFAIL else perm(reason)

    def _pool_for(self, key: tuple[int, int]) -> UserPool:
        pool = self._pools.get(key)
        if pool is not None:
            self._pools.move_to_end(key)
            return pool
        if len(self._pools) >= MAX_USER_POOLS:
            _, old = self._pools.popitem(last=False)
            asyncio.ensure_future(old.close())
        pool = UserPool(*key)
        self._pools[key] = pool
        return pool


def _open_job(message: Path, root: Path) -> tuple[list[int], str]:
    """As root: the message (read-only) and the Maildir's anchor."""
    try:
        msg_fd = os.open(message, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise temp(f"queued message unreadable: {e.strerror or e}") from None
    try:
        anchor_fd, rel = open_anchor(root)
    except OSError as e:
        os.close(msg_fd)
        raise temp(f"{e.strerror or e}: {e.filename or root}") from None
    return [msg_fd, anchor_fd], rel


def _deliver_here(root: Path, job: MdaJob) -> None:
    try:
        with open(job.message, "rb") as message:
            maildir.deliver(root, job.prefix, message, job.name)
    except OSError as e:
        status, text = worker.os_error_result(e, str(root))
        raise (perm(text) if status == worker.EX_PERM else temp(text)) from None
