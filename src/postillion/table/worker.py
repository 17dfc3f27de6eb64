"""One thread per table for blocking calls, answering in batches.

SQLite (and the system's getpwnam) block, and docs/architecture.md keeps blocking work
off the event loop.  A `Worker` is one thread that runs a table's calls in
the order they were made -- so one connection is only ever used by one
thread, and a swap of generations made by a call is seen by every later
call -- and hands results back to the loop in batches: with 64 lookups in
flight the loop is woken once per batch, not once per lookup, which is what
`loop.run_in_executor` costs.  A call whose awaiting task was cancelled
(the table timeout) is skipped if it has not started, and its result
dropped if it has.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[asyncio.AbstractEventLoop | None, "asyncio.Future[Any] | None",
             Callable[..., Any], tuple[Any, ...]]


def _deliver(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, value, error in results:
        if future.cancelled():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)


class Worker:
    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._main, name=self.name,
                                                    daemon=True)
                    self._thread.start()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args) in the worker thread, after every call made before."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._ensure_thread()
        self._jobs.put((loop, future, fn, args))
        return await future

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) in the worker thread, nobody waiting for the result."""
        self._ensure_thread()
        self._jobs.put((None, None, fn, args))

    def stop(self) -> None:
        """Let the thread finish the calls already made, then exit."""
        if self._thread is not None:
            self._jobs.put(None)

    def _main(self) -> None:
        while True:
            job = self._jobs.get()
            stop = job is None
            batch: list[_Job] = [] if job is None else [job]
            while not stop:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                else:
                    batch.append(more)
            by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
            for loop, future, fn, args in batch:
                if future is not None and future.cancelled():
                    continue                    # timed out while queued: skip the work
                try:
                    result = (future, fn(*args), None)
                except BaseException as e:      # handed to the caller, who maps it
                    result = (future, None, e)
                if loop is not None:
                    by_loop.setdefault(loop, []).append(result)
            for loop, results in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_deliver, results)
                except RuntimeError:
                    pass                        # that loop is closed: nobody waits
            if stop:
                return
