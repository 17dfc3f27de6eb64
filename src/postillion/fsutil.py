"""Durable file system steps shared by the queue, the Maildir agent and makemap.

A rename is durable only once its directory is fsynced (the file's own
fsync does not cover its name): every "write aside, fsync, rename" in
Postillion ends with `fsync_dir`.  `fsync_together` flushes many files and
directories at once, for the queue's group commit.  A leaf module: anyone
may import it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import sys
import threading
from collections.abc import Sequence
from typing import Callable, Final


def fsync_dir(path: str | os.PathLike[str], fsync: Callable[[int], None] = os.fsync) -> None:
    """fsync a directory, so the names created or renamed in it survive a crash.

    `fsync` is a seam: the queue's tests make it fail to prove nothing is
    acknowledged without it.
    """
    fd = os.open(os.fspath(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def fsync_each(syncs: Sequence[tuple[int, bool]]) -> list[OSError | None]:
    """`fsync_together` one call after the other: fdatasync(fd) when the
    flag is set, else fsync(fd); the error of each, or None."""
    errors: list[OSError | None] = []
    for fd, data_only in syncs:
        try:
            (os.fdatasync if data_only else os.fsync)(fd)
            errors.append(None)
        except OSError as e:
            errors.append(e)
    return errors


def fsync_together(syncs: Sequence[tuple[int, bool]]) -> list[OSError | None]:
    """Flush every fd of `syncs` at once -- fdatasync when its flag is set,
    else fsync -- and wait for all; the error of each, or None.

    Why at once: a flush issued alone waits for its own journal commit and
    disk cache flush, so N files one after the other cost N of them; issued
    together they share one or two.  On Linux they are handed to the kernel
    in one io_submit(2) of IOCB_CMD_FDSYNC / IOCB_CMD_FSYNC requests (Linux
    AIO, 4.18+), which runs each as the very fsync(2) or fdatasync(2) --
    same durability, same error reporting -- on kernel worker threads side
    by side, and one io_getevents(2) waits for them all: two system calls a
    batch and no thread of ours per file.  Where that is not available (not
    Linux, an architecture not listed, io_setup refused), or for a request
    the kernel will not take, the flush is done here with the plain call.
    Thread safe: concurrent callers take turns.
    """
    global _the_ring, _ring_broken
    if not syncs:
        return []
    ring = _ring()
    if ring is None:
        return fsync_each(syncs)
    with _ring_lock:
        try:
            return ring.fsync(syncs)
        except OSError as e:
            # io_getevents failed: the outcome of the requests in flight is
            # unknown, so each counts as failed; the ring is not used again.
            _the_ring, _ring_broken = None, True
            return [e] * len(syncs)


#: Requests one AIO context holds (its `io_setup` size); a longer batch is
#: submitted in slices of this many.  The kernel's system-wide budget
#: (/proc/sys/fs/aio-max-nr, 65536 by default) is charged about twice this.
AIO_SLOTS: Final = 128

# Linux AIO system call numbers (io_setup, io_getevents, io_submit); aarch64
# and riscv64 share the generic table.  Little-endian machines only: the
# iocb below has the little-endian field order.
_SYSCALLS: Final = {
    "x86_64": (206, 208, 209),
    "aarch64": (0, 4, 2),
    "riscv64": (0, 4, 2),
}
_IOCB_CMD_FSYNC: Final = 2
_IOCB_CMD_FDSYNC: Final = 3


class _Iocb(ctypes.Structure):
    _fields_ = [
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class _IoEvent(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    ]


class _Ring:
    """One Linux AIO context, used for fsync requests only.

    Created once per process and kept until it exits: io_destroy waits for
    an RCU grace period (32 ms measured here), far too slow to pay per batch.
    """

    def __init__(self, numbers: tuple[int, int, int]) -> None:
        self._setup, self._getevents, self._submit = numbers
        self._syscall = ctypes.CDLL(None, use_errno=True).syscall  # releases the GIL
        self._syscall.restype = ctypes.c_long
        self._ctx = ctypes.c_ulong(0)
        if self._call(self._setup, ctypes.c_uint(AIO_SLOTS), ctypes.byref(self._ctx)) < 0:
            error = ctypes.get_errno()
            raise OSError(error, f"io_setup: {os.strerror(error)}")

    def _call(self, number: int, *args: object) -> int:
        return int(self._syscall(ctypes.c_long(number), *args))

    def fsync(self, syncs: Sequence[tuple[int, bool]]) -> list[OSError | None]:
        errors: list[OSError | None] = [None] * len(syncs)
        for start in range(0, len(syncs), AIO_SLOTS):
            self._slice(syncs, start, min(start + AIO_SLOTS, len(syncs)), errors)
        return errors

    def _slice(self, syncs: Sequence[tuple[int, bool]], start: int, end: int,
               errors: list[OSError | None]) -> None:
        count = end - start
        iocbs = (_Iocb * count)()
        pointers = (ctypes.POINTER(_Iocb) * count)()
        for k in range(count):
            fd, data_only = syncs[start + k]
            iocbs[k].aio_data = start + k
            iocbs[k].aio_fildes = fd
            iocbs[k].aio_lio_opcode = _IOCB_CMD_FDSYNC if data_only else _IOCB_CMD_FSYNC
            pointers[k] = ctypes.pointer(iocbs[k])
        pointer_size = ctypes.sizeof(ctypes.c_void_p)
        submitted = k = 0
        while k < count:
            taken = self._call(self._submit, self._ctx, ctypes.c_long(count - k),
                               ctypes.byref(pointers, k * pointer_size))
            if taken > 0:
                submitted += taken
                k += taken
                continue
            # The kernel refused request k (EBADF, EINVAL, EAGAIN...): the
            # plain call gives it its true outcome.
            index = start + k
            errors[index] = fsync_each([syncs[index]])[0]
            k += 1
        events = (_IoEvent * count)()
        while submitted:
            got = self._call(self._getevents, self._ctx, ctypes.c_long(submitted),
                             ctypes.c_long(submitted), ctypes.byref(events), None)
            if got < 0:
                error = ctypes.get_errno()
                if error == errno.EINTR:
                    continue
                raise OSError(error, f"io_getevents: {os.strerror(error)}")
            for event in events[:got]:
                if event.res < 0:
                    errors[event.data] = OSError(-event.res, os.strerror(-event.res))
            submitted -= got


_ring_lock = threading.Lock()
_the_ring: _Ring | None = None
_ring_broken = False


def _ring() -> _Ring | None:
    """This process's AIO context, made on first use; None where there is none."""
    global _the_ring, _ring_broken
    with _ring_lock:
        if _the_ring is None and not _ring_broken:
            numbers = _SYSCALLS.get(platform.machine()) if sys.platform.startswith("linux") else None
            try:
                _the_ring = _Ring(numbers) if numbers is not None else None
            except (OSError, AttributeError):
                _the_ring = None
            _ring_broken = _the_ring is None
        return _the_ring


def _forget_ring() -> None:
    """In a forked child: the parent's context is not inherited, and its
    lock may have been held by a thread the child does not have."""
    global _ring_lock, _the_ring, _ring_broken
    _ring_lock, _the_ring, _ring_broken = threading.Lock(), None, False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_ring)
