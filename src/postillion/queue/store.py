"""The durable on-disk queue: what makes a `250 ... accepted` a promise.

Messages are received in `incoming/<msgid>/` and moved whole into
`queue/<XX>/<msgid>/` when committed (layout.py); `open()` cleans up after a
crash (recover.py).

A session streams DATA into an `Incoming`, then calls `commit()`; only when
that returns may it send 250, so a crash or power cut afterwards can
duplicate a delivery but never lose one (docs/architecture.md).  What must
be on disk by then, and what puts it there:

- the data of the message file and of each envelope file: fdatasync(2).
  It also writes the metadata needed to read the data back -- on Linux the
  file size and block allocation of a file just written -- and skips only
  the timestamps, which no reader of the queue looks at;
- the names of those files in `incoming/<msgid>/`: fsync of that directory;
- the move of `incoming/<msgid>` to `queue/XX/<msgid>`: fsync of
  `queue/XX`, of `queue/` when XX is new, and of `incoming/`.

The files are flushed before the move: whatever a crash interrupts,
`queue/` holds only whole messages.

Concurrent commits are flushed together (group commit): one executor job
for the whole batch.  It writes every file of the batch, then hands all of
their flushes to the kernel at once (`fsutil.fsync_together`), so they
share a journal commit and a disk cache flush instead of waiting for one
each; renames every message, then flushes the directories they touched, at
once too.  Only the batch's own files and directories are flushed: a 250
never waits for the dirty data of other programs on the same file system,
as it would with syncfs(2) or sync(2).

The blocking file system work runs in a thread executor, never on the event
loop, and not in the loop's default executor either: the store owns a small
one (`THREADS`), so that a flush, which every `250` waits for, never queues
behind password hashing or anything else the process runs in threads.
`fsync` (single flushes: updates, recovery), `flush` (a batch's flushes)
and `rename` are injectable so tests can make each step fail; so is the
executor (the store then does not own it).

Every disk error reaches the client through one mapping, `storage_reply`: a
full spool (ENOSPC, EDQUOT) is `452 4.3.1`, and the session goes on; any
other error is `421 4.3.0`, and the session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal, TypeVar

from postillion import metrics
from postillion.fsutil import fsync_dir, fsync_together
from postillion.errors import Reply, TempFail
from postillion.queue import layout
from postillion.queue.envelope import Envelope, format_evpid, format_msgid, new_msgid
from postillion.queue.recover import recover

log = logging.getLogger("postillion.queue")

TEMP_ERROR: Final = Reply(421, "4.3.0", "Temporary Error")
"""What the client sees when the queue cannot make its message durable."""
NO_SPACE: Final = Reply(452, "4.3.1", "Insufficient system storage")
"""What the client sees when the spool is full: this message failed, the
session did not (RFC 3463 X.3.1, mail system full)."""
_NO_SPACE_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


def storage_reply(error: OSError) -> Reply:
    """The one mapping of a spool I/O error to what the client sees.

    Out of space or quota is a state of the disk, not of the connection:
    nothing half-written stays queued, so the client may RSET and try again
    (a smaller message, or later) in the same session -- 452 4.3.1.  Any
    other error (EIO, EROFS...) says the spool cannot be trusted now: 421
    4.3.0, and the session closes.
    """
    return NO_SPACE if error.errno in _NO_SPACE_ERRNOS else TEMP_ERROR


def _tempfail(what: str, error: OSError) -> TempFail:
    return TempFail(storage_reply(error), f"{what}: {error}")


_WRITE_BUFFER: Final = 256 * 1024
#: Threads of the store's own executor: one group-commit flush runs at a
#: time, the others create, remove and update messages beside it.
THREADS: Final = 4
_T = TypeVar("_T")


class Incoming:
    """A message being received: DATA is streamed to `incoming/<msgid>/message`.

    `write()` is a plain buffered write, cheap enough to call from the event
    loop for each chunk.  A write error does not raise: it is remembered in
    `error`, later chunks are dropped, and `commit()` refuses with the
    TempFail `storage_reply` maps it to.  The session may look at `error`
    sooner, to discard the message (and free its space) at once.
    """

    __slots__ = ("msgid", "path", "size", "_file", "_error", "_evpids", "_state")

    def __init__(self, msgid: int, path: Path, file: BinaryIO) -> None:
        self.msgid = msgid
        self.path = path
        self.size = 0
        self._file = file
        self._error: OSError | None = None
        self._evpids: set[int] = set()
        self._state: Literal["open", "committing", "committed", "closed"] = "open"

    def write(self, data: bytes) -> None:
        if self._state != "open":
            raise RuntimeError(f"message {format_msgid(self.msgid)} is {self._state}")
        if self._error is not None:
            return
        try:
            self._file.write(data)
        except OSError as e:
            self._error = e
            return
        self.size += len(data)

    @property
    def error(self) -> OSError | None:
        """The first write error, if any; commit() will then refuse."""
        return self._error

    def envelope(self, **fields: Any) -> Envelope:
        """A new Envelope of this message with an evpid unique within it."""
        while True:
            envelope = Envelope.new(self.msgid, **fields)
            if envelope.id not in self._evpids:
                self._evpids.add(envelope.id)
                return envelope


@dataclass(slots=True)
class _Txn:
    incoming: Incoming
    envelopes: tuple[Envelope, ...]
    payloads: tuple[bytes, ...]
    future: asyncio.Future[None]
    fds: list[int] = field(default_factory=list)  # envelope files, open until flushed
    final: Path | None = None  # set once renamed into queue/


@dataclass(slots=True)
class _Flush:
    """One flush of a group commit: fdatasync of a file of the batch (open
    as `fd`), or fsync of a directory (`fd` None), for the txns at `indexes`."""

    indexes: tuple[int, ...]
    path: Path
    fd: int | None = None
    ok: bool = True

    @property
    def call(self) -> str:
        return "fsync" if self.fd is None else "fdatasync"


class QueueStore:
    """The filesystem queue (docs/architecture.md).  Call `open()` once before anything else.

    `on_commit`, when set, is called on the event loop for each envelope of
    each successful commit, before the committer resumes: the daemon points
    it at `Scheduler.schedule`, so no committed envelope can be left
    unscheduled, even when the session that sent it has gone away.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        fsync: Callable[[int], None] = os.fsync,
        flush: Callable[[Sequence[tuple[int, bool]]], list[OSError | None]] = fsync_together,
        rename: Callable[[Path, Path], None] = os.rename,
        executor: Executor | None = None,
    ) -> None:
        self.root = Path(root)
        #: The spool as the log names it (a role works in it by a relative path).
        self.display = str(self.root)
        self.incoming_dir = self.root / layout.INCOMING
        self.queue_dir = self.root / layout.QUEUE
        self.corrupt_dir = self.root / layout.CORRUPT
        self.on_commit: Callable[[Envelope], None] | None = None
        self.batches = 0
        """Number of group-commit flushes run so far (one executor job each)."""
        self._fsync = fsync
        self._rename = rename
        self._flush = flush
        self._owns_executor = executor is None
        self._executor: Executor = executor if executor is not None else ThreadPoolExecutor(
            THREADS, thread_name_prefix="postillion-queue")
        self._index: dict[int, set[int]] = {}
        self._durable_buckets: set[str] = set()
        self._pending: list[_Txn] = []
        self._flusher: asyncio.Task[None] | None = None
        self._opened = False

    # -- start -------------------------------------------------------------

    async def open(self, clean_incoming: bool = True) -> list[Envelope]:
        """Create the directories, recover after a stop or crash, and return
        every committed envelope so the scheduler can schedule it.

        `incoming/` leftovers were never acknowledged and are deleted --
        unless `clean_incoming` is False: a queue process restarted while
        smtp processes are receiving must leave their messages alone.  An
        envelope file that fails validation goes to `corrupt/` with a warning
        (and its message too when no good envelope is left); a message with
        no envelope at all (a crash while removing its last one) is removed.
        """
        if self._opened:
            raise RuntimeError("QueueStore.open() called twice")
        envelopes = await self._run(self._open_sync, clean_incoming)
        self._opened = True
        return envelopes

    def attach(self) -> None:
        """Use a spool another process opened and recovered: an smtp process
        only creates and commits messages; the queue process owns the rest
        (`open`, `adopt`, `update`, `remove`)."""
        if self._opened:
            raise RuntimeError("QueueStore already open")
        self._opened = True

    def adopt(self, envelope: Envelope) -> None:
        """Count in an envelope another process committed (the queue process
        hears of each commit from the smtp process that made it)."""
        self._index.setdefault(envelope.msgid, set()).add(envelope.id)

    def _open_sync(self, clean_incoming: bool = True) -> list[Envelope]:
        envelopes, buckets = recover(self.root, self._fsync_dir, clean_incoming)
        self._durable_buckets = buckets
        for envelope in envelopes:
            self._index.setdefault(envelope.msgid, set()).add(envelope.id)
        log.info("queue opened path=%s envelopes=%d messages=%d", self.display, len(envelopes), len(self._index))
        return envelopes

    # -- receiving ---------------------------------------------------------

    def free_space(self) -> int:
        """Octets the spool's file system still lets an unprivileged writer
        use (statvfs: f_bavail * f_frsize, without the blocks kept for root),
        for the session's `queue min-free` check at MAIL.  Raises OSError.

        Called on the event loop, not in the executor: on a local file
        system statvfs reads counters the kernel keeps in memory, with no
        disk I/O, in about a microsecond -- less than a hop to the executor,
        where it would also wait behind group-commit flushes.  (On a network
        file system it is a round trip; a spool there is not supported.)
        """
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    async def create(self) -> Incoming:
        """Start a message: a fresh msgid, unique among incoming and queued
        ones, and `incoming/<msgid>/message` open for writing.

        Raises TempFail (`storage_reply`) when the spool cannot be written.
        """
        self._check_open()
        try:
            return await self._run(self._create_sync)
        except OSError as e:
            log.error("queue create-failed reason=%r", str(e))
            raise _tempfail("queue create", e) from e

    def _create_sync(self) -> Incoming:
        while True:
            msgid = new_msgid()
            path = self.incoming_dir / format_msgid(msgid)
            try:
                path.mkdir(mode=layout.DIR_MODE)
            except FileExistsError:
                continue
            if (self.queue_dir / layout.bucket(msgid) / path.name).exists():
                path.rmdir()
                continue
            try:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                fd = os.open(path / layout.MESSAGE, flags, layout.FILE_MODE)
            except OSError:
                path.rmdir()
                raise
            return Incoming(msgid, path, os.fdopen(fd, "wb", buffering=_WRITE_BUFFER))

    async def discard(self, incoming: Incoming) -> None:
        """Drop a message that will not be acknowledged (client quit, 5xx, 421).

        Safe in any cleanup path: a no-op once discarded or after a failed
        commit, and while a commit is in progress (that commit decides, see
        `commit`).  Discarding a committed message is a bug: RuntimeError.
        """
        if incoming._state == "committed":
            raise RuntimeError(f"message {format_msgid(incoming.msgid)} is committed")
        if incoming._state != "open":
            return
        incoming._state = "closed"
        await self._run(self._discard_sync, incoming)

    def _discard_sync(self, incoming: Incoming) -> None:
        with contextlib.suppress(OSError):
            incoming._file.close()
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(incoming.path)

    async def commit(self, incoming: Incoming, envelopes: Sequence[Envelope]) -> None:
        """Make the message and its envelopes durable: file data, then
        directories, fsynced, and the message moved into `queue/`.

        Only after this returns may the session send 250.  It may wait for a
        flush already running and share the next one with other sessions.
        On any failure the message's files are removed, nothing stays queued,
        and TempFail is raised: 452 4.3.1 for a full spool, else 421 4.3.0
        (`storage_reply`); a write error seen by `Incoming.write` and
        envelopes not of this message (a bug, logged) fail the same way.
        If the caller is cancelled before the flush starts, the message is
        dropped; after, it stays queued and is handed to `on_commit` (a
        crash-like duplicate at worst, never a loss).
        """
        self._check_open()
        if incoming._state != "open":
            raise RuntimeError(f"message {format_msgid(incoming.msgid)} is {incoming._state}")
        refusal = _refusal(incoming, envelopes)
        if refusal is not None:
            log.error("queue commit-refused msgid=%08x reason=%r", incoming.msgid, refusal.reason)
            await self.discard(incoming)
            raise refusal
        incoming._state = "committing"
        loop = asyncio.get_running_loop()
        txn = _Txn(incoming, tuple(envelopes), tuple(e.to_bytes() for e in envelopes), loop.create_future())
        self._pending.append(txn)
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush_loop())
        await txn.future

    async def _flush_loop(self) -> None:
        """Flush batches until no commit is waiting.  One runs at a time; the
        commits that arrive meanwhile form the next batch."""
        batch: list[_Txn] = []
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                live = [t for t in batch if not t.future.cancelled()]
                dropped = [t for t in batch if t.future.cancelled()]
                for txn in dropped:
                    txn.incoming._state = "closed"
                self.batches += 1
                start = time.perf_counter()
                try:
                    errors = await self._run(self._flush_batch, live, dropped)
                except Exception as e:  # a bug: answer every waiter, keep going
                    log.exception("queue flush-failed")
                    errors = [TempFail(TEMP_ERROR, f"flush: {e!r}") for _ in live]
                # What the batch's clients waited for their 250 (docs/metrics.md).
                metrics.COMMIT_SECONDS.observe(time.perf_counter() - start)
                for txn, error in zip(live, errors):
                    self._finish(txn, error)
                batch = []
        except asyncio.CancelledError:
            for txn in batch + self._pending:
                if not txn.future.done():
                    txn.future.set_exception(TempFail(TEMP_ERROR, "queue shutting down"))
            self._pending = []
            raise
        finally:
            self._flusher = None

    def _finish(self, txn: _Txn, error: TempFail | None) -> None:
        msgid = txn.incoming.msgid
        if error is not None:
            txn.incoming._state = "closed"
            log.error("queue commit-failed msgid=%08x reason=%r", msgid, error.reason)
            if not txn.future.done():
                txn.future.set_exception(error)
            return
        txn.incoming._state = "committed"
        self._index[msgid] = {e.id for e in txn.envelopes}
        metrics.ENVELOPES_ENQUEUED.inc(len(txn.envelopes))
        log.debug("queue commit msgid=%08x envelopes=%d size=%d", msgid, len(txn.envelopes), txn.incoming.size)
        if self.on_commit is not None:
            for envelope in txn.envelopes:
                try:
                    self.on_commit(envelope)
                except Exception:
                    log.exception("queue on-commit-failed evpid=%016x", envelope.id)
        if not txn.future.done():
            txn.future.set_result(None)

    def _flush_batch(self, txns: list[_Txn], dropped: list[_Txn]) -> list[TempFail | None]:
        """The executor job of one batch; returns a failure per txn (or None).

        Three steps, each for the whole batch: write every txn's files;
        flush them and their message directories, all at once; move each
        message into queue/ and flush the directories the moves touched, all
        at once.  A failure fails only the txns it concerns; their files are
        removed.
        """
        for txn in dropped:
            self._discard_sync(txn.incoming)
        errors: list[TempFail | None] = [None] * len(txns)
        try:
            for i, txn in enumerate(txns):
                try:
                    self._write_txn(txn)
                except OSError as e:
                    errors[i] = _tempfail(f"write {txn.incoming.path}", e)
            jobs: list[_Flush] = []
            for i, txn in enumerate(txns):
                if errors[i] is None:
                    path = txn.incoming.path
                    jobs.append(_Flush((i,), path / layout.MESSAGE, txn.incoming._file.fileno()))
                    jobs.extend(_Flush((i,), path / format_evpid(e.id), fd)
                                for e, fd in zip(txn.envelopes, txn.fds))
                    jobs.append(_Flush((i,), path))
            self._flush_together(jobs, errors)
        finally:
            for txn in txns:
                _close_files(txn)
        new_buckets: set[str] = set()
        by_bucket: dict[str, list[int]] = {}
        for i, txn in enumerate(txns):
            if errors[i] is not None:
                continue
            bucket = layout.bucket(txn.incoming.msgid)
            bucket_dir = self.queue_dir / bucket
            try:
                if bucket not in self._durable_buckets:
                    with contextlib.suppress(FileExistsError):
                        bucket_dir.mkdir(mode=layout.DIR_MODE)
                    new_buckets.add(bucket)
                final = bucket_dir / txn.incoming.path.name
                self._rename(txn.incoming.path, final)
                txn.final = final
                by_bucket.setdefault(bucket, []).append(i)
            except OSError as e:
                errors[i] = _tempfail(f"rename {txn.incoming.path}", e)
        moved = tuple(i for i, t in enumerate(txns) if t.final is not None)
        if moved:
            jobs = [_Flush(tuple(indexes), self.queue_dir / bucket) for bucket, indexes in by_bucket.items()]
            jobs.append(_Flush(moved, self.incoming_dir))
            created = _Flush(tuple(i for b in new_buckets for i in by_bucket.get(b, ())), self.queue_dir)
            if new_buckets:
                jobs.append(created)
            self._flush_together(jobs, errors)
            if created.ok:
                self._durable_buckets |= new_buckets
        for i, txn in enumerate(txns):
            if errors[i] is not None:
                with contextlib.suppress(OSError):
                    layout.remove_any(txn.final or txn.incoming.path)
        return errors

    def _write_txn(self, txn: _Txn) -> None:
        """Write out the rest of the message and every envelope file; all
        stay open (the message in `incoming._file`, the envelopes in
        `txn.fds`) for the batch's flush, which `_close_files` ends."""
        txn.incoming._file.flush()
        for envelope, payload in zip(txn.envelopes, txn.payloads):
            path = txn.incoming.path / format_evpid(envelope.id)
            txn.fds.append(_create_file(path, payload))

    def _flush_together(self, jobs: list[_Flush], errors: list[TempFail | None]) -> None:
        """Flush every file and directory of `jobs` in one `fsync_together`
        call, so the disk sees them together (see fsutil).  A failed flush,
        or a directory that cannot be opened, fails each txn it was for
        (`job.indexes`) and clears `job.ok`."""
        syncs: list[tuple[int, bool]] = []
        flushed: list[_Flush] = []
        opened: list[int] = []
        try:
            for job in jobs:
                if job.fd is not None:
                    syncs.append((job.fd, True))
                    flushed.append(job)
                    continue
                try:
                    fd = os.open(job.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                except OSError as e:
                    self._failed(job, e, errors)
                    continue
                opened.append(fd)
                syncs.append((fd, False))
                flushed.append(job)
            for job, error in zip(flushed, self._flush(syncs), strict=True):
                if error is not None:
                    self._failed(job, error, errors)
        finally:
            for fd in opened:
                os.close(fd)

    @staticmethod
    def _failed(job: _Flush, error: OSError, errors: list[TempFail | None]) -> None:
        job.ok = False
        for i in job.indexes:
            if errors[i] is None:
                errors[i] = _tempfail(f"{job.call} {job.path}", error)

    # -- after delivery attempts -------------------------------------------

    def message_path(self, msgid: int) -> Path:
        """Where a committed message's content is, for the delivery agents."""
        return self._message_dir(msgid) / layout.MESSAGE

    async def update(self, envelope: Envelope) -> None:
        """Durably rewrite an envelope (retry count, last try, error line):
        temp file, fsync, rename, directory fsync.

        Raises KeyError if it is no longer queued, TempFail on a disk error
        (the previous version then stays on disk, intact).
        """
        if envelope.id not in self._index.get(envelope.msgid, ()):
            raise KeyError(format_evpid(envelope.id))
        try:
            await self._run(self._update_sync, envelope, envelope.to_bytes())
        except OSError as e:
            log.error("queue update-failed evpid=%016x reason=%r", envelope.id, str(e))
            raise _tempfail(f"update {format_evpid(envelope.id)}", e) from e

    def _update_sync(self, envelope: Envelope, payload: bytes) -> None:
        directory = self._message_dir(envelope.msgid)
        final = directory / format_evpid(envelope.id)
        temp = directory / (final.name + layout.TMP_SUFFIX)
        try:
            self._write_file(temp, payload)
            self._rename(temp, final)
        except OSError:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        self._fsync_dir(directory)

    async def remove(self, envelope: Envelope) -> None:
        """Forget an envelope after delivery or bounce; with the last one of a
        message, the message and its directory go too.

        Not fsynced: a crash right after may bring the envelope back and
        deliver it twice, which the queue allows (docs/architecture.md); it saves a disk flush per
        delivery.  Removing an envelope not queued does nothing.  Raises
        TempFail on a disk error (the file may then reappear at restart).
        """
        evpids = self._index.get(envelope.msgid)
        if evpids is None or envelope.id not in evpids:
            return
        evpids.discard(envelope.id)
        last = not evpids
        if last:
            del self._index[envelope.msgid]
        try:
            await self._run(self._remove_sync, envelope, last)
        except OSError as e:
            log.error("queue remove-failed evpid=%016x reason=%r", envelope.id, str(e))
            raise _tempfail(f"remove {format_evpid(envelope.id)}", e) from e

    def _remove_sync(self, envelope: Envelope, last: bool) -> None:
        directory = self._message_dir(envelope.msgid)
        if last:
            # A message directory holds only files (the message, envelopes):
            # unlink them and rmdir -- rmtree's walk costs several times more
            # per delivery, and only something unexpected inside needs it.
            try:
                for name in os.listdir(directory):
                    os.unlink(directory / name)
                os.rmdir(directory)
            except IsADirectoryError:
                shutil.rmtree(directory)
        else:
            (directory / format_evpid(envelope.id)).unlink(missing_ok=True)

    # -- listing (ctl tools) ----------------------------------------------

    def msgids(self) -> list[int]:
        """Queued message ids, from memory (no disk access)."""
        return sorted(self._index)

    def evpids(self, msgid: int) -> list[int]:
        """Queued envelope ids of one message, from memory."""
        return sorted(self._index.get(msgid, ()))

    async def load(self, evpid: int) -> Envelope:
        """Read one queued envelope from disk; KeyError if not queued,
        EnvelopeCorrupt if its file cannot be trusted."""
        msgid = evpid >> 32
        if evpid not in self._index.get(msgid, ()):
            raise KeyError(format_evpid(evpid))
        path = self._message_dir(msgid) / format_evpid(evpid)
        return Envelope.from_bytes(await self._run(path.read_bytes))

    async def envelopes_of(self, msgid: int) -> list[Envelope]:
        """Every queued envelope of one message, read from disk."""
        return [await self.load(evpid) for evpid in self.evpids(msgid)]

    async def close(self) -> None:
        """Wait for the commits already started, then let the store's own
        threads go (jobs already queued still run); call before exiting."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._owns_executor:
            self._executor.shutdown(wait=False)

    # -- helpers -------------------------------------------------------------

    def _message_dir(self, msgid: int) -> Path:
        return self.queue_dir / layout.bucket(msgid) / format_msgid(msgid)

    def _check_open(self) -> None:
        if not self._opened:
            raise RuntimeError("QueueStore.open() has not been called")

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def _write_file(self, path: Path, data: bytes) -> None:
        """Write `path` whole (created or truncated) and fsync it."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, layout.FILE_MODE)
        try:
            _write_all(fd, data)
            self._fsync(fd)
        finally:
            os.close(fd)

    def _fsync_dir(self, path: Path) -> None:
        fsync_dir(path, self._fsync)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _create_file(path: Path, data: bytes) -> int:
    """A new file `path` holding `data`, left open: its fd, to flush and close."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, layout.FILE_MODE)
    try:
        _write_all(fd, data)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _close_files(txn: _Txn) -> None:
    """Close what `_write_txn` left open; nothing is written by closing."""
    with contextlib.suppress(OSError):
        txn.incoming._file.close()
    for fd in txn.fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    txn.fds.clear()


def _refusal(incoming: Incoming, envelopes: Sequence[Envelope]) -> TempFail | None:
    """Why a commit cannot proceed, or None."""
    if incoming.error is not None:
        return _tempfail(f"write {incoming.path}", incoming.error)
    if not envelopes:
        return TempFail(TEMP_ERROR, "no envelope")
    if any(e.msgid != incoming.msgid for e in envelopes):
        return TempFail(TEMP_ERROR, "envelope of another message")
    if len({e.id for e in envelopes}) != len(envelopes):
        return TempFail(TEMP_ERROR, "duplicate evpid")
    return None

