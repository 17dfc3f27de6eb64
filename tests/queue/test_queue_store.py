"""The filesystem queue: commit durability, recovery at open, group commit."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from postillion.errors import TempFail
from postillion import fsutil
from postillion.queue.envelope import Envelope, format_evpid, format_msgid
from postillion.queue.store import Incoming, QueueStore, storage_reply

BODY = b"From: a@example.net\r\nSubject: hi\r\n\r\n" + b"x" * 70000 + b"\r\n"


async def opened(root: Path, **kwargs) -> QueueStore:
    store = QueueStore(root, **kwargs)
    await store.open()
    return store


async def received(store: QueueStore, nrcpt: int = 2, body: bytes = BODY) -> tuple[Incoming, list[Envelope]]:
    incoming = await store.create()
    for start in range(0, len(body), 65536):
        incoming.write(body[start : start + 65536])
    envelopes = [
        incoming.envelope(dispatcher="local", sender="a@example.net", rcpt=f"u{i}@x.example", dest=f"u{i}@x.example")
        for i in range(nrcpt)
    ]
    return incoming, envelopes


def queued_files(root: Path) -> list[Path]:
    """Every file (not directory) under queue/ and incoming/."""
    out = []
    for top in ("queue", "incoming"):
        for dirpath, _dirs, files in os.walk(root / top):
            out.extend(Path(dirpath) / f for f in files)
    return out


async def reopened(root: Path) -> list[Envelope]:
    return await QueueStore(root).open()


class FailingFlush:
    """The real `fsync_together`, except that the n-th file or directory it
    is given (0-based, counted across calls once armed) reports `code`."""

    def __init__(self, n: int, code: int = errno.EIO) -> None:
        self.n, self.code, self.seen, self.armed, self.failed = n, code, 0, False, False

    def __call__(self, syncs):
        errors = fsutil.fsync_together(syncs)
        if self.armed:
            if self.seen <= self.n < self.seen + len(syncs):
                self.failed = True
                errors[self.n - self.seen] = OSError(self.code, os.strerror(self.code))
            self.seen += len(syncs)
        return errors


class FailAt:
    """A seam: the wrapped call fails (EIO, or `code`) on its n-th use (0-based) once armed."""

    def __init__(self, real, n: int, code: int = errno.EIO) -> None:
        self.real, self.n, self.calls, self.armed, self.failed = real, n, 0, False, False
        self.code = code
        self.lock = threading.Lock()

    def __call__(self, *args):
        with self.lock:
            if self.armed:
                index, self.calls = self.calls, self.calls + 1
                if index == self.n:
                    self.failed = True
                    raise OSError(self.code, os.strerror(self.code))
        return self.real(*args)


def each(sync):
    """A batch flush (the store's `flush` seam) that calls `sync(fd)` for each
    file and directory in turn, so a per-descriptor seam sees them all."""

    def flush(syncs):
        errors = []
        for fd, _data_only in syncs:
            try:
                sync(fd)
                errors.append(None)
            except OSError as e:
                errors.append(e)
        return errors

    return flush


# -- commit and reopen -------------------------------------------------------------


async def test_commit_then_reopen_lists_the_envelopes(tmp_path):
    store = await opened(tmp_path)
    incoming, envelopes = await received(store, nrcpt=3)
    await store.commit(incoming, envelopes)

    msgid = incoming.msgid
    msgdir = tmp_path / "queue" / f"{msgid >> 24:02x}" / format_msgid(msgid)
    assert sorted(os.listdir(msgdir)) == sorted(["message", *(format_evpid(e.id) for e in envelopes)])
    assert store.message_path(msgid).read_bytes() == BODY
    assert incoming.size == len(BODY)
    assert os.listdir(tmp_path / "incoming") == []
    assert store.msgids() == [msgid]
    assert store.evpids(msgid) == sorted(e.id for e in envelopes)
    assert sorted(await store.envelopes_of(msgid), key=lambda e: e.id) == sorted(envelopes, key=lambda e: e.id)

    assert sorted(await reopened(tmp_path), key=lambda e: e.id) == sorted(envelopes, key=lambda e: e.id)


async def test_directories_are_private(tmp_path):
    store = await opened(tmp_path / "spool")
    incoming, envelopes = await received(store)
    await store.commit(incoming, envelopes)
    for path in (tmp_path / "spool", tmp_path / "spool" / "incoming", tmp_path / "spool" / "queue",
                 tmp_path / "spool" / "corrupt", store.message_path(incoming.msgid).parent):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    assert stat.S_IMODE(store.message_path(incoming.msgid).stat().st_mode) == 0o600


async def test_every_file_and_directory_is_fsynced_before_commit_returns(tmp_path):
    synced: list[str] = []

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        os.fsync(fd)

    store = await opened(tmp_path, fsync=recording_fsync, flush=each(recording_fsync))
    synced.clear()
    incoming, envelopes = await received(store)
    staging = str(incoming.path)
    await store.commit(incoming, envelopes)
    bucket = tmp_path / "queue" / f"{incoming.msgid >> 24:02x}"
    expected = {
        f"{staging}/message",
        *(f"{staging}/{format_evpid(e.id)}" for e in envelopes),
        staging,  # the message directory, before it moves
        str(tmp_path / "queue"),  # the bucket was new
        str(bucket),
        str(tmp_path / "incoming"),
    }
    assert set(synced) == expected
    assert len(synced) == len(expected)


async def test_commit_refuses_foreign_or_no_envelopes(tmp_path):
    store = await opened(tmp_path)
    incoming, _ = await received(store)
    other, other_envs = await received(store)
    with pytest.raises(TempFail):
        await store.commit(incoming, other_envs)
    assert not incoming.path.exists()
    with pytest.raises(TempFail):
        await store.commit(other, [])
    assert queued_files(tmp_path) == [] and store.msgids() == []


FULL = (452, "4.3.1", "Insufficient system storage")
BROKEN = (421, "4.3.0", "Temporary Error")
#: errno -> the reply a client sees: a full spool keeps the session, the rest ends it.
STORAGE_ERRORS = [(errno.ENOSPC, FULL), (errno.EDQUOT, FULL), (errno.EIO, BROKEN),
                  (errno.EROFS, BROKEN)]


def triple(reply) -> tuple[int, str, str]:
    return (reply.code, reply.enhanced, reply.text)


@pytest.mark.parametrize(("code", "reply"), STORAGE_ERRORS,
                         ids=[errno.errorcode[c] for c, _ in STORAGE_ERRORS])
def test_storage_reply_maps_only_lack_of_space_to_452(code, reply):
    assert triple(storage_reply(OSError(code, os.strerror(code)))) == reply


@pytest.mark.parametrize(("code", "reply"), STORAGE_ERRORS,
                         ids=[errno.errorcode[c] for c, _ in STORAGE_ERRORS])
async def test_write_error_is_reported_at_commit(tmp_path, code, reply):
    store = await opened(tmp_path)
    incoming, envelopes = await received(store)

    def failing(data):
        raise OSError(code, os.strerror(code))

    incoming._file.write = failing
    incoming.write(b"more")  # does not raise: one failure path, at commit
    assert incoming.error is not None and incoming.error.errno == code
    with pytest.raises(TempFail) as info:
        await store.commit(incoming, envelopes)
    assert triple(info.value.reply) == reply
    assert_nothing_queued(tmp_path, store)


async def test_free_space_is_what_an_unprivileged_writer_may_use(tmp_path):
    store = await opened(tmp_path)
    st = os.statvfs(tmp_path)
    assert abs(store.free_space() - st.f_bavail * st.f_frsize) < 64 * 1024 * 1024
    assert store.free_space() > 0


async def test_discard_drops_the_message(tmp_path):
    store = await opened(tmp_path)
    incoming, _ = await received(store)
    await store.discard(incoming)
    await store.discard(incoming)  # idempotent
    other, envelopes = await received(store)
    await store.commit(other, envelopes)
    with pytest.raises(RuntimeError):
        await store.discard(other)  # a committed message is never dropped this way
    assert os.listdir(tmp_path / "incoming") == []
    assert store.msgids() == [other.msgid]
    with pytest.raises(RuntimeError):
        incoming.write(b"late")


async def test_on_commit_sees_each_envelope_before_commit_returns(tmp_path):
    store = await opened(tmp_path)
    seen: list[Envelope] = []
    store.on_commit = seen.append
    incoming, envelopes = await received(store, nrcpt=3)
    await store.commit(incoming, envelopes)
    assert seen == envelopes


# -- failure at each step --------------------------------------------------------


def assert_nothing_queued(root: Path, store: QueueStore) -> None:
    assert queued_files(root) == []
    assert os.listdir(root / "incoming") == []
    for bucket in os.listdir(root / "queue"):
        assert os.listdir(root / "queue" / bucket) == []
    assert store.msgids() == []


async def test_failing_fsync_at_each_step_leaves_nothing_queued(tmp_path):
    steps = 0
    for n in range(50):
        root = tmp_path / f"run{n}"
        fsync = FailAt(os.fsync, n)
        store = await opened(root, fsync=fsync, flush=each(fsync))
        fsync.armed = True
        incoming, envelopes = await received(store, nrcpt=2)
        try:
            await store.commit(incoming, envelopes)
        except TempFail as e:
            assert fsync.failed
            assert (e.reply.code, e.reply.enhanced, e.reply.text) == (421, "4.3.0", "Temporary Error")
            assert_nothing_queued(root, store)
            assert await reopened(root) == []
            steps += 1
            continue
        assert not fsync.failed
        assert len(await reopened(root)) == 2
        break
    else:
        pytest.fail("commit never succeeded")
    # message, 2 envelopes, message dir, queue/ (new bucket), queue/XX, incoming/
    assert steps == 7


@pytest.mark.parametrize("together", [False, True], ids=["each", "together"])
async def test_no_space_at_each_commit_step_is_452_and_leaves_nothing_queued(tmp_path, together):
    """ENOSPC (or EDQUOT) from the flush -- delayed allocation, metadata --
    fails the message with 452 4.3.1 at whichever step it comes, whether the
    flushes come one by one or from the real batch call (`fsync_together`)."""
    steps = 0
    for n in range(50):
        root = tmp_path / f"run{n}"
        if together:
            sync = FailingFlush(n, errno.ENOSPC)
            store = await opened(root, flush=sync)
        else:
            sync = FailAt(os.fsync, n, errno.ENOSPC)
            store = await opened(root, fsync=sync, flush=each(sync))
        sync.armed = True
        incoming, envelopes = await received(store, nrcpt=2)
        try:
            await store.commit(incoming, envelopes)
        except TempFail as e:
            assert triple(e.reply) == FULL
            assert_nothing_queued(root, store)
            steps += 1
            continue
        assert not sync.failed
        break
    assert steps == 7
    rename = FailAt(os.rename, 0, errno.EDQUOT)
    store = await opened(tmp_path / "rename", rename=rename)
    rename.armed = True
    incoming, envelopes = await received(store)
    with pytest.raises(TempFail) as info:
        await store.commit(incoming, envelopes)
    assert triple(info.value.reply) == FULL
    assert_nothing_queued(tmp_path / "rename", store)


async def test_failing_rename_leaves_nothing_queued(tmp_path):
    rename = FailAt(os.rename, 0)
    store = await opened(tmp_path, rename=rename)
    rename.armed = True
    incoming, envelopes = await received(store)
    with pytest.raises(TempFail):
        await store.commit(incoming, envelopes)
    assert rename.failed
    assert_nothing_queued(tmp_path, store)
    assert await reopened(tmp_path) == []


async def test_one_failure_in_a_batch_fails_only_its_message(tmp_path):
    doomed: set[str] = set()

    def rename(src, dst):
        if Path(src).name in doomed:
            raise OSError(errno.EIO, "injected failure")
        os.rename(src, dst)

    store = await opened(tmp_path, rename=rename)
    batch = [await received(store) for _ in range(5)]
    doomed.add(batch[2][0].path.name)
    results = await asyncio.gather(*(store.commit(i, e) for i, e in batch), return_exceptions=True)
    assert [isinstance(r, TempFail) for r in results] == [False, False, True, False, False]
    ok = {i.msgid for n, (i, _) in enumerate(batch) if n != 2}
    assert set(store.msgids()) == ok
    assert {e.msgid for e in await reopened(tmp_path)} == ok


# -- group commit ----------------------------------------------------------------


async def test_concurrent_commits_share_flushes(tmp_path):
    store = await opened(tmp_path)
    batch = [await received(store, nrcpt=1, body=b"hello\r\n") for _ in range(50)]
    await asyncio.wait_for(asyncio.gather(*(store.commit(i, e) for i, e in batch)), 30)
    assert store.batches < 50
    assert len(store.msgids()) == 50
    assert len(await reopened(tmp_path)) == 50


async def test_commits_arriving_during_a_flush_wait_for_the_next_batch(tmp_path):
    release = threading.Event()
    first = threading.Event()

    def slow_fsync(fd: int) -> None:
        first.set()
        release.wait(10)
        os.fsync(fd)

    store = await opened(tmp_path)
    store._flush = each(slow_fsync)
    a = await received(store, nrcpt=1)
    t_a = asyncio.create_task(store.commit(*a))
    await asyncio.wait_for(asyncio.to_thread(first.wait, 10), 10)  # flush of A is running
    later = [await received(store, nrcpt=1) for _ in range(10)]
    t_later = [asyncio.create_task(store.commit(*x)) for x in later]
    await asyncio.sleep(0.05)
    assert not t_a.done() and not any(t.done() for t in t_later)  # nobody acknowledged early
    release.set()
    await asyncio.wait_for(asyncio.gather(t_a, *t_later), 30)
    assert store.batches == 2
    assert len(store.msgids()) == 11


async def test_commit_cancelled_before_its_flush_is_dropped(tmp_path):
    release = threading.Event()
    started = threading.Event()

    def slow_fsync(fd: int) -> None:
        started.set()
        release.wait(10)
        os.fsync(fd)

    store = await opened(tmp_path)
    store._flush = each(slow_fsync)
    a = await received(store, nrcpt=1)
    b = await received(store, nrcpt=1)
    t_a = asyncio.create_task(store.commit(*a))
    await asyncio.wait_for(asyncio.to_thread(started.wait, 10), 10)
    t_b = asyncio.create_task(store.commit(*b))
    await asyncio.sleep(0)
    t_b.cancel()
    release.set()
    await asyncio.wait_for(t_a, 30)
    with pytest.raises(asyncio.CancelledError):
        await t_b
    await asyncio.wait_for(store.close(), 30)
    assert store.msgids() == [a[0].msgid]
    assert os.listdir(tmp_path / "incoming") == []


async def test_commit_does_not_need_the_default_executor(tmp_path):
    """The store's flushes run in threads it owns: with the loop's default
    executor wholly taken (a password check, a slow table, anything run with
    to_thread), a commit still completes, and so every 250 it gates."""
    loop = asyncio.get_running_loop()
    default = ThreadPoolExecutor(1)
    loop.set_default_executor(default)
    release, taken = threading.Event(), threading.Event()
    blocker = loop.run_in_executor(None, lambda: (taken.set(), release.wait(30)))
    try:
        for _ in range(1000):
            if taken.is_set():
                break
            await asyncio.sleep(0.01)
        assert taken.is_set()
        store = await opened(tmp_path)
        await asyncio.wait_for(store.commit(*await received(store)), 10)
        assert not blocker.done() and store.batches == 1
        await store.close()
        assert store._executor._shutdown  # its own, stopped by close()
    finally:
        release.set()
        await blocker


async def test_an_executor_passed_in_is_not_the_store_s_to_stop(tmp_path):
    executor = ThreadPoolExecutor(2)
    store = await opened(tmp_path, executor=executor)
    await store.commit(*await received(store))
    await store.close()
    assert executor.submit(lambda: 42).result(10) == 42
    executor.shutdown()


# -- recovery at open ------------------------------------------------------------


async def test_incoming_leftovers_are_removed_at_open(tmp_path):
    store = await opened(tmp_path)
    incoming, _ = await received(store)
    incoming._file.flush()
    assert os.listdir(tmp_path / "incoming") == [format_msgid(incoming.msgid)]
    assert await reopened(tmp_path) == []
    assert os.listdir(tmp_path / "incoming") == []


async def test_corrupt_envelope_goes_to_corrupt_and_is_logged(tmp_path, caplog):
    store = await opened(tmp_path)
    incoming, envelopes = await received(store, nrcpt=2)
    await store.commit(incoming, envelopes)
    bad = store.message_path(incoming.msgid).parent / format_evpid(envelopes[0].id)
    bad.write_bytes(bad.read_bytes()[:-10])
    with caplog.at_level(logging.WARNING, logger="postillion.queue"):
        assert await reopened(tmp_path) == [envelopes[1]]
    assert "corrupt" in caplog.text and bad.name in caplog.text
    assert (tmp_path / "corrupt" / format_msgid(incoming.msgid) / bad.name).exists()
    assert store.message_path(incoming.msgid).exists()  # the good envelope still needs it


async def test_message_whose_envelopes_are_all_corrupt_is_kept_in_corrupt(tmp_path):
    store = await opened(tmp_path)
    incoming, envelopes = await received(store, nrcpt=1)
    await store.commit(incoming, envelopes)
    msgdir = store.message_path(incoming.msgid).parent
    (msgdir / format_evpid(envelopes[0].id)).write_bytes(b"garbage")
    assert await reopened(tmp_path) == []
    assert not msgdir.exists()
    kept = tmp_path / "corrupt" / format_msgid(incoming.msgid)
    assert (kept / "message").read_bytes() == BODY


async def test_message_without_envelopes_is_removed_at_open(tmp_path):
    store = await opened(tmp_path)
    incoming, envelopes = await received(store, nrcpt=1)
    await store.commit(incoming, envelopes)
    msgdir = store.message_path(incoming.msgid).parent
    (msgdir / format_evpid(envelopes[0].id)).unlink()  # a crash while removing the last one
    assert await reopened(tmp_path) == []
    assert not msgdir.exists()
    assert os.listdir(tmp_path / "corrupt") == []


async def test_half_done_update_is_ignored_at_open(tmp_path):
    store = await opened(tmp_path)
    incoming, envelopes = await received(store, nrcpt=1)
    await store.commit(incoming, envelopes)
    msgdir = store.message_path(incoming.msgid).parent
    (msgdir / (format_evpid(envelopes[0].id) + ".tmp")).write_bytes(b"{")
    assert await reopened(tmp_path) == envelopes
    assert sorted(os.listdir(msgdir)) == sorted(["message", format_evpid(envelopes[0].id)])


# -- update and remove -----------------------------------------------------------


async def test_update_is_durable(tmp_path):
    store = await opened(tmp_path)
    incoming, envelopes = await received(store, nrcpt=1)
    await store.commit(incoming, envelopes)
    changed = envelopes[0].replace(retry=3, last_try=envelopes[0].ctime + 5, errorline="451 4.2.0 busy")
    await store.update(changed)
    assert await store.load(changed.id) == changed
    assert await reopened(tmp_path) == [changed]


async def test_failing_update_keeps_the_old_envelope(tmp_path):
    rename = FailAt(os.rename, 0)
    store = await opened(tmp_path, rename=rename)
    incoming, envelopes = await received(store, nrcpt=1)
    await store.commit(incoming, envelopes)
    rename.armed = True
    with pytest.raises(TempFail):
        await store.update(envelopes[0].replace(retry=1))
    assert await store.load(envelopes[0].id) == envelopes[0]
    assert sorted(os.listdir(store.message_path(incoming.msgid).parent)) == sorted(
        ["message", format_evpid(envelopes[0].id)]
    )


async def test_update_of_a_removed_envelope_is_refused(tmp_path):
    store = await opened(tmp_path)
    incoming, envelopes = await received(store, nrcpt=2)
    await store.commit(incoming, envelopes)
    await store.remove(envelopes[0])
    with pytest.raises(KeyError):
        await store.update(envelopes[0].replace(retry=1))


async def test_remove_last_envelope_removes_the_message(tmp_path):
    store = await opened(tmp_path)
    incoming, envelopes = await received(store, nrcpt=2)
    await store.commit(incoming, envelopes)
    msgdir = store.message_path(incoming.msgid).parent
    await store.remove(envelopes[0])
    assert msgdir.exists() and store.evpids(incoming.msgid) == [envelopes[1].id]
    assert await reopened(tmp_path) == [envelopes[1]]
    await store.remove(envelopes[1])
    await store.remove(envelopes[1])  # already gone: nothing happens
    assert not msgdir.exists()
    assert store.msgids() == []
    assert await reopened(tmp_path) == []


async def test_create_before_open_is_a_bug(tmp_path):
    with pytest.raises(RuntimeError):
        await QueueStore(tmp_path).create()




# -- the batch flushes its own files, nothing else --------------------------------


async def test_a_batch_flushes_only_its_own_files_and_directories(tmp_path):
    """Each batch hands the kernel two sets of flushes, each at once: every
    file of its messages (fdatasync) with their directories (fsync), then the
    directories the moves into queue/ touched.  Nothing else: not a message
    still being received beside them, not the spool, not the file system."""
    calls: list[dict[str, bool]] = []

    def recording(syncs):
        calls.append({os.readlink(f"/proc/self/fd/{fd}"): data_only for fd, data_only in syncs})
        assert len(calls[-1]) == len(syncs)  # each file or directory once a call
        return fsutil.fsync_together(syncs)

    store = await opened(tmp_path, flush=recording)
    bystander, _ = await received(store)
    bystander._file.flush()
    pairs = [await received(store, nrcpt=2) for _ in range(30)]
    staging = {i.msgid: str(i.path) for i, _ in pairs}
    await asyncio.gather(*(store.commit(i, e) for i, e in pairs))

    assert len(calls) == 2 * store.batches and store.batches < 30
    files = {path for call in calls[0::2] for path, data_only in call.items() if data_only}
    assert files == {f"{staging[i.msgid]}/{name}" for i, envelopes in pairs
                     for name in ("message", *(format_evpid(e.id) for e in envelopes))}
    assert {p for call in calls[0::2] for p, data_only in call.items() if not data_only} == set(staging.values())
    buckets = {str(tmp_path / "queue" / f"{i.msgid >> 24:02x}") for i, _ in pairs}
    moved = calls[1::2]
    assert all(not data_only for call in moved for data_only in call.values())
    assert {p for call in moved for p in call} == buckets | {str(tmp_path / "incoming"), str(tmp_path / "queue")}
    assert all(str(tmp_path / "incoming") in call for call in moved)
    assert not any(str(bystander.path) in p for call in calls for p in call)
    assert len(await reopened(tmp_path)) == 60


async def test_a_failed_flush_in_the_real_batch_call_fails_only_its_message(tmp_path):
    doomed: set[str] = set()

    def flush(syncs):
        errors = fsutil.fsync_together(syncs)
        return [OSError(errno.EIO, "injected") if doomed & {os.readlink(f"/proc/self/fd/{fd}")} else error
                for (fd, _), error in zip(syncs, errors)]

    store = await opened(tmp_path, flush=flush)
    batch = [await received(store) for _ in range(5)]
    doomed.add(f"{batch[3][0].path}/message")
    results = await asyncio.gather(*(store.commit(i, e) for i, e in batch), return_exceptions=True)
    assert [isinstance(r, TempFail) for r in results] == [False, False, False, True, False]
    assert triple(results[3].reply) == BROKEN
    ok = {i.msgid for n, (i, _) in enumerate(batch) if n != 3}
    assert set(store.msgids()) == ok
    assert {e.msgid for e in await reopened(tmp_path)} == ok
    assert os.listdir(tmp_path / "incoming") == []
