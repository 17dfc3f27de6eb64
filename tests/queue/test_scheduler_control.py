"""What `postillion ctl` asks of the scheduler: pause a subsystem, hold one
envelope, make one due now, remove one (at once, or once its attempt in
flight ends, never with a bounce)."""

from __future__ import annotations

import asyncio

from postillion.errors import Reply, TempFail
from postillion.queue.envelope import Envelope
from postillion.queue.scheduler import Scheduler
from tests.queue.test_queue_scheduler import Running, queue_with, wait_until

BUSY = Reply(451, "4.2.0", "Mailbox busy")


async def test_pause_mda_parks_due_envelopes_until_resumed(tmp_path):
    store, [env] = await queue_with(tmp_path)
    delivered: list[int] = []

    async def deliver(e: Envelope) -> None:
        delivered.append(e.id)

    async def bounce(e: Envelope) -> None:
        raise AssertionError("no bounce")

    scheduler = Scheduler(store, deliver, bounce=bounce)
    scheduler.pause("mda")
    scheduler.schedule(env)
    async with Running(scheduler):
        await asyncio.sleep(0.2)
        assert delivered == [] and scheduler.runstate(env.id)[0] == "pending"
        assert scheduler.size == 1
        scheduler.resume("mda")
        await wait_until(lambda: delivered == [env.id])
    await store.close()


async def test_hold_release_and_make_due(tmp_path):
    store, [env] = await queue_with(tmp_path)
    attempts: list[int] = []

    async def deliver(e: Envelope) -> None:
        attempts.append(e.retry)
        raise TempFail(BUSY)

    scheduler = Scheduler(store, deliver, bounce=lambda e: asyncio.sleep(0), base_delay=3600)
    async with Running(scheduler):
        scheduler.schedule(env)
        await wait_until(lambda: attempts == [0] and scheduler.runstate(env.id)[0] == "pending")
        assert scheduler.hold(env.id) == "held"
        assert scheduler.runstate(env.id) == ("offline", 0.0) and scheduler.held_ids() == [env.id]
        assert not scheduler.make_due(env.id)          # held: schedule leaves it
        assert scheduler.release(env.id)
        assert scheduler.runstate(env.id)[1] > 3000    # back at its backoff time
        assert scheduler.make_due(env.id)              # due now; the retry count stays
        await wait_until(lambda: attempts == [0, 1])
    await store.close()


async def test_remove_of_an_envelope_in_flight_waits_for_its_attempt(tmp_path):
    store, [env] = await queue_with(tmp_path)
    release = asyncio.Event()

    async def deliver(e: Envelope) -> None:
        await release.wait()
        raise TempFail(BUSY)

    async def bounce(e: Envelope) -> None:
        raise AssertionError("remove never bounces")

    scheduler = Scheduler(store, deliver, bounce=bounce)
    async with Running(scheduler):
        scheduler.schedule(env)
        await wait_until(lambda: scheduler.runstate(env.id)[0] == "inflight")
        assert await scheduler.remove(env) == "after"
        assert store.evpids(env.msgid) == [env.id]
        release.set()
        await wait_until(lambda: store.evpids(env.msgid) == [])
        assert scheduler.size == 0
    await store.close()
