"""The local delivery agent: runs one envelope's delivery as its user.

Never as root (a project rule, and OpenSMTPD's): when the daemon is root the
delivery runs in a worker process (`worker.py`) that dropped to the
recipient's uid/gid from the userinfo table, with no supplementary groups,
umask 077 and resource limits; a userinfo that says uid 0 is refused
(temporarily, so the administrator can fix the table without losing mail).
When the daemon is not root it can only deliver as itself: files in a
thread off the event loop, commands in a worker of its own uid.

A job's method (`jobs.py`) picks the way: `maildir` and `file` (an mbox file
an alias target names) are resolved from an anchor (below) and written by
the worker; `mbox`, the system mailbox `mbox_directory/USER`, is created and
dot-locked here as root -- the mail spool is root's -- and appended to by
the worker through the descriptor it is given; `mda` runs a command in the
worker (`command.py`).

Workers are long-lived, a few per (uid, gid) -- in a virtual setup usually
one vmail uid, so one pool -- and each serves one job at a time over its own
socketpair.  The daemon opens the queued message (and the anchor or the
mailbox, see `worker.py`) and passes the descriptors: a worker never gets
the spool.

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
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from postillion.config.model import MdaOptions
from postillion.errors import MailError
from postillion.mda import maildir, mbox, worker
from postillion.mda.format import FormatEnv, FormatError, expand
from postillion.mda.jobs import MdaJob, perm, temp
from postillion.table.values import Userinfo

__all__ = ["MdaAgent", "MdaJob", "file_path", "maildir_path", "mbox_path", "open_anchor"]

logger = logging.getLogger("postillion.mda")

WORKER_TIMEOUT: Final = 300.0  # seconds a file delivery may take before it counts as failed
COMMAND_GRACE: Final = 10.0    # a command job's own timeout comes first; then this much more
KEEP_IDLE: Final = 2           # idle workers kept per (uid, gid) however long they wait
IDLE_RETIRE: Final = 30.0      # seconds the idle workers beyond KEEP_IDLE are kept
MAX_USER_POOLS: Final = 32     # distinct (uid, gid) pools kept; the least recently used goes
RETIRE_GRACE: Final = 2.0      # seconds a retired worker gets to exit before SIGKILL


def maildir_path(job: MdaJob) -> Path:
    return _expanded(job, job.path_template or "~/Maildir", "maildir")


def file_path(job: MdaJob) -> Path:
    """The mbox file an alias or `.forward` target names (method `file`)."""
    return _expanded(job, job.path_template or "", "mbox")


def mbox_path(job: MdaJob, directory: str) -> str:
    """The system mailbox `directory/USER` (method `mbox`); PermFail
    without a usable user name."""
    name = job.user.username
    if not name or "/" in name or name in (".", ".."):
        raise perm(f"no mailbox name for user {name!r}")
    return os.path.join(directory, name)


def _expanded(job: MdaJob, template: str, what: str) -> Path:
    env = FormatEnv(sender=job.sender, rcpt=job.rcpt, dest=job.dest,
                    username=job.user.username, directory=job.user.home)
    try:
        path = Path(expand(template, env))
    except FormatError as e:
        raise perm(str(e)) from None
    if not path.is_absolute():
        raise perm(f"{what} path is not absolute: {path}")
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

    def __init__(self, uid: int, gid: int, max_file_size: int = 0) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # Exec'd, not forked: the daemon has threads, and a fresh
            # interpreter inherits none of their locks.  Started from the
            # event loop's thread, which lives as long as the daemon: the
            # parent-death signal follows the thread that forked.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "postillion.mda.worker", str(theirs.fileno()),
                 str(os.getpid()), str(uid), str(gid), str(max_file_size)],
                pass_fds=(theirs.fileno(),), cwd="/", stdin=subprocess.DEVNULL,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONSAFEPATH": "1"})
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self.channel = ours

    async def run(self, frame: bytes, fds: list[int]) -> tuple[int, str]:
        """Send one job, wait for its answer; OSError/EOFError if the worker is gone."""
        loop = asyncio.get_running_loop()
        # One job at a time per worker: the send buffer is empty, so this
        # small frame never blocks.
        socket.send_fds(self.channel, [frame], fds)
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
    """The workers of one (uid, gid): at most `size` busy at once (`mda
    limit max-session-per-user`), started on demand.  A worker that finishes
    waits for the next job: KEEP_IDLE of them for good, the others until
    they have been idle IDLE_RETIRE seconds -- starting an interpreter per
    delivery under load cost several times the delivery itself."""

    def __init__(self, uid: int, gid: int, size: int = 7, max_file_size: int = 0) -> None:
        self.uid, self.gid = uid, gid
        self.size = max(1, size)
        self.max_file_size = max_file_size
        self.idle: list[Worker] = []
        self.idle_since: dict[Worker, float] = {}
        self.busy: set[Worker] = set()
        self.closed = False
        self._free = asyncio.Condition()

    async def acquire(self) -> Worker:
        async with self._free:
            while not self.idle and len(self.busy) >= self.size:
                await self._free.wait()
            if self.idle:
                w = self.idle.pop()             # the most recently used: warm
                self.idle_since.pop(w, None)
            else:
                w = Worker(self.uid, self.gid, self.max_file_size)
            self.busy.add(w)
            return w

    async def release(self, w: Worker, healthy: bool) -> None:
        self.busy.discard(w)
        if healthy and not self.closed and len(self.idle) < self.size:
            self.idle.append(w)
            self.idle_since[w] = time.monotonic()
        else:
            if not healthy:
                w.proc.kill()
            await w.retire()
        async with self._free:
            self._free.notify()
        await self._retire_stale()

    async def _retire_stale(self) -> None:
        """Idle workers beyond KEEP_IDLE, unused for IDLE_RETIRE seconds (the
        oldest idle first: `acquire` takes the most recent)."""
        now = time.monotonic()
        stale = []
        while len(self.idle) > KEEP_IDLE and now - self.idle_since.get(self.idle[0], now) >= IDLE_RETIRE:
            w = self.idle.pop(0)
            self.idle_since.pop(w, None)
            stale.append(w)
        await asyncio.gather(*(w.retire() for w in stale), return_exceptions=True)

    async def close(self) -> None:
        """Retire the idle workers now, the busy ones when their job ends."""
        self.closed = True
        workers, self.idle = self.idle, []
        self.idle_since.clear()
        await asyncio.gather(*(w.retire() for w in workers), return_exceptions=True)


class MdaAgent:
    """Runs local deliveries, each as its recipient (see the module doc).

    `mda limit max-session` bounds deliveries in flight (the rest wait here,
    cancellable, so a stop is prompt) and `max-session-per-user` those of
    one uid; `options` holds them and the other settings of local delivery.
    """

    def __init__(self, options: MdaOptions | None = None) -> None:
        self.options = options or MdaOptions()
        self._pools: OrderedDict[tuple[int, int], UserPool] = OrderedDict()
        self._slots = asyncio.Semaphore(self.options.max_session)
        #: How each job method is delivered.
        self._methods: dict[str, Callable[[MdaJob], Awaitable[None]]] = {
            "maildir": self._maildir, "mbox": self._mbox, "file": self._file,
            "mda": self._command}

    def start(self) -> None:
        """Nothing to do until the first delivery: pools start on demand."""

    async def stop(self) -> None:
        pools = list(self._pools.values())
        self._pools.clear()
        await asyncio.gather(*(p.close() for p in pools), return_exceptions=True)

    def worker_pids(self) -> list[int]:
        """The running workers' pids (for tests and `ctl`)."""
        return [w.proc.pid for p in self._pools.values() for w in (*p.idle, *p.busy)]

    async def deliver(self, job: MdaJob) -> None:
        """Deliver one job as its user, by its method; TempFail or PermFail."""
        logger.debug("mda job method=%s user=%s uid=%d", job.method, job.user.username, job.user.uid)
        handler = self._methods.get(job.method)
        if handler is None:
            raise perm(f"unknown local delivery method {job.method!r}")
        if os.geteuid() == 0 and (job.user.uid == 0 or job.user.gid == 0):
            raise temp(f"refusing to deliver as root for user {job.user.username}")
        async with self._slots:
            await handler(job)

    async def _maildir(self, job: MdaJob) -> None:
        await self._under_path(job, maildir_path(job), _deliver_here, "maildir", name=job.name)

    async def _mbox(self, job: MdaJob) -> None:
        """The system mailbox, DIRECTORY/USER: created and dot-locked here
        (as root: the spool is root's), appended to by the user's worker."""
        directory = self.options.mbox_directory
        where = mbox_path(job, directory)
        name = job.user.username
        held = await asyncio.to_thread(_open_spool, directory, name, job, where)
        dirfd, lock, mailbox, message = held
        try:
            if os.geteuid() != 0:
                await asyncio.to_thread(_append_here, mailbox, message, job, where)
            else:
                await self._run(job.user, worker.encode_job("mbox", job.prefix, root=where,
                                                            sender=job.sender),
                                [message, mailbox])
        finally:
            await asyncio.to_thread(_close_spool, dirfd, lock, [mailbox, message])

    async def _file(self, job: MdaJob) -> None:
        """An mbox file an alias target names: everything as the user."""
        path = file_path(job)
        await self._under_path(job, path, _file_here, "file", sender=job.sender)

    async def _under_path(self, job: MdaJob, path: Path,
                          here: Callable[[Path, MdaJob], None], method: str,
                          **fields: str | None) -> None:
        """A delivery to a path the user owns (a Maildir, an mbox file): not
        root, we can only deliver as ourselves, in a thread; as root, the
        message and the path's anchor go to the user's worker."""
        if os.geteuid() != 0:
            await asyncio.to_thread(here, path, job)
            return
        fds, rel = await asyncio.to_thread(_open_job, job.message, path)
        try:
            await self._run(job.user, worker.encode_job(method, job.prefix, root=rel, **fields),
                            fds)
        finally:
            _close(fds)

    async def _command(self, job: MdaJob) -> None:
        if not job.argv:
            raise perm("no command to run")
        try:
            message = await asyncio.to_thread(os.open, job.message, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise temp(f"queued message unreadable: {e.strerror or e}") from None
        options = self.options
        frame = worker.encode_job("mda", job.prefix, argv=list(job.argv),
                                  environ=list(job.environ), home=job.user.home,
                                  timeout=options.command_timeout, cpu=options.command_cpu)
        user = job.user
        if os.geteuid() != 0:        # not root: our own worker, as ourselves
            user = Userinfo(user.username, os.getuid(), os.getgid(), user.home)
        try:
            await self._run(user, frame, [message], options.command_timeout + COMMAND_GRACE)
        finally:
            _close([message])

    async def _run(self, user: Userinfo, frame: bytes, fds: list[int],
                   timeout: float = WORKER_TIMEOUT) -> None:
        pool = self._pool_for((user.uid, user.gid))
        try:
            w = await pool.acquire()
        except OSError as e:
            raise temp(f"cannot start a delivery worker: {e.strerror or e}") from None
        healthy = False
        try:
            async with asyncio.timeout(timeout):
                status, reason = await w.run(frame, fds)
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
        pool = UserPool(*key, size=self.options.max_session_per_user,
                        max_file_size=self.options.max_file_size)
        self._pools[key] = pool
        return pool


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _open_job(message: Path, root: Path) -> tuple[list[int], str]:
    """As root: the message (read-only) and the anchor of `root`."""
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


def _os_failure(e: OSError, where: str) -> MailError:
    status, text = worker.os_error_result(e, where)
    return perm(text) if status == worker.EX_PERM else temp(text)


def _open_spool(directory: str, name: str, job: MdaJob,
                where: str) -> tuple[int, str | None, int, int]:
    """The mail spool's directory, the dot-lock, the mailbox, the message.

    As root the dot-lock is required (the spool lets only root and group
    mail create files, and readers rely on it); otherwise it is taken if
    the directory allows."""
    opened: list[int] = []
    lock = None
    try:
        dirfd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        opened.append(dirfd)
        lock = mbox.dotlock(dirfd, name, required=os.geteuid() == 0)
        mailbox = mbox.open_spool_mailbox(dirfd, name, job.user.uid, job.user.gid)
        opened.append(mailbox)
        message = os.open(job.message, os.O_RDONLY | os.O_CLOEXEC)
        return dirfd, lock, mailbox, message
    except OSError as e:
        if opened and lock is not None:
            mbox.release(opened[0], lock)
        _close(opened)
        raise _os_failure(e, where) from None


def _close_spool(dirfd: int, lock: str | None, fds: list[int]) -> None:
    mbox.release(dirfd, lock)
    _close([*fds, dirfd])


def _append_here(mailbox: int, message: int, job: MdaJob, where: str) -> None:
    try:
        with os.fdopen(message, "rb", closefd=False) as source:
            mbox.append(mailbox, job.sender, job.prefix, source)
    except OSError as e:
        raise _os_failure(e, where) from None


def _file_here(path: Path, job: MdaJob) -> None:
    try:
        with open(job.message, "rb") as source:
            mbox.deliver_file(str(path), job.sender, job.prefix, source)
    except OSError as e:
        raise _os_failure(e, str(path)) from None


def _deliver_here(root: Path, job: MdaJob) -> None:
    try:
        with open(job.message, "rb") as message:
            maildir.deliver(root, job.prefix, message, job.name)
    except OSError as e:
        raise _os_failure(e, str(root)) from None
