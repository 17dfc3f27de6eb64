"""The auth pool: bounded threads, a bounded wait, slots freed by the work."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from postillion.lookup.authpool import AuthBusy, AuthPool


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.005)


async def test_threads_plus_waiting_then_busy():
    pool = AuthPool(2, 1)
    release = threading.Event()
    started: list[int] = []

    def slow(i: int) -> int:
        started.append(i)
        assert release.wait(10)
        return i

    try:
        tasks = [asyncio.create_task(pool.run(slow, i)) for i in range(3)]
        await asyncio.to_thread(wait_until, lambda: len(started) == 2 and pool.in_flight == 3)
        with pytest.raises(AuthBusy):
            await pool.run(slow, 99)
        assert pool.in_flight == 3  # the refused check took no slot
        release.set()
        assert sorted(await asyncio.gather(*tasks)) == [0, 1, 2]
        assert pool.in_flight == 0
        assert await pool.run(lambda: "again") == "again"
    finally:
        release.set()
        pool.close()


async def test_a_cancelled_caller_frees_its_slot_only_when_the_work_ends():
    """A session that goes away does not make room while its check still
    occupies a thread; a check still waiting is dropped at once."""
    pool = AuthPool(1, 1)
    release = threading.Event()
    try:
        running = asyncio.create_task(pool.run(release.wait, 10))
        waiting = asyncio.create_task(pool.run(lambda: "never"))
        await asyncio.to_thread(wait_until, lambda: pool.in_flight == 2)
        waiting.cancel()
        running.cancel()
        await asyncio.gather(running, waiting, return_exceptions=True)
        assert pool.in_flight == 1  # the running one still holds its thread
        release.set()
        await asyncio.to_thread(wait_until, lambda: pool.in_flight == 0)
    finally:
        release.set()
        pool.close()


def test_a_pool_needs_a_thread():
    with pytest.raises(ValueError):
        AuthPool(0, 4)
