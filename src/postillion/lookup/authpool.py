"""The threads that hash AUTH passwords, and how many checks may wait.

A password check is slow on purpose (bcrypt cost 12 is ~0.25 s of CPU).
Run in the event loop's default executor, a flood of AUTH attempts would
queue ahead of every other blocking job of the process and, without bound,
make every client wait.  So checks get a pool of their own:
`Limits.auth_threads` threads, and at most `Limits.auth_max_waiting` checks
waiting for one.  A check beyond that raises `AuthBusy` at once (the client
is told `454 4.7.0`, a temporary failure it may retry) instead of joining a
queue that only grows.  The queue's flushes, which gate every `250`, run in
the queue store's own executor and never wait behind a password.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

_T = TypeVar("_T")


class AuthBusy(Exception):
    """Every auth thread is busy and the wait queue is full."""


class AuthPool:
    """`threads` threads for hash checks, `max_waiting` more checks queued."""

    def __init__(self, threads: int, max_waiting: int) -> None:
        if threads < 1 or max_waiting < 0:
            raise ValueError("an auth pool needs a thread and a non-negative wait queue")
        self.threads = threads
        self.max_waiting = max_waiting
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="postillion-auth")
        self._lock = threading.Lock()
        self._in_flight = 0  # submitted and not finished: running + waiting

    @property
    def in_flight(self) -> int:
        """Checks running or waiting for a thread."""
        with self._lock:
            return self._in_flight

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """`fn(*args)` in a pool thread; AuthBusy if the pool is full.

        A check counts until its thread is done with it, even when the
        caller has gone (a cancelled session): the slot is freed by the
        work finishing, not by the caller leaving.
        """
        with self._lock:
            if self._in_flight >= self.threads + self.max_waiting:
                raise AuthBusy()
            self._in_flight += 1
        try:
            future = self._executor.submit(functools.partial(fn, *args))
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _release(self, _future: Future[Any] | None) -> None:
        with self._lock:
            self._in_flight -= 1

    def close(self) -> None:
        """Drop the checks still waiting; running ones finish in their thread."""
        self._executor.shutdown(wait=False, cancel_futures=True)
