"""The scheduler: outcomes of deliveries, backoff, expiry, limits, stop."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from postillion.errors import PermFail, Reply, TempFail
from postillion.queue.envelope import Envelope
from postillion.queue.scheduler import DueQueue, Scheduler, next_attempt
from postillion.queue.store import QueueStore

BUSY = Reply(451, "4.2.0", "Mailbox busy")
UNKNOWN = Reply(550, "5.1.1", "Invalid recipient")


async def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.005)


async def queue_with(root: Path, nrcpt: int = 1, **fields) -> tuple[QueueStore, list[Envelope]]:
    store = QueueStore(root)
    await store.open()
    incoming = await store.create()
    incoming.write(b"Subject: test\r\n\r\nhello\r\n")
    envelopes = [
        incoming.envelope(dispatcher="local", sender="a@example.net", rcpt=f"u{i}@example.org",
                          dest=f"u{i}@example.org", **fields)
        for i in range(nrcpt)
    ]
    await store.commit(incoming, envelopes)
    return store, envelopes


class Running:
    """Run a scheduler for the duration of a block, stopping it boundedly."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    async def __aenter__(self) -> Scheduler:
        self.task = asyncio.create_task(self.scheduler.run())
        return self.scheduler

    async def __aexit__(self, *exc) -> None:
        await asyncio.wait_for(self.scheduler.stop(timeout=1.0), 5)
        await asyncio.wait_for(self.task, 5)


# -- pure parts --------------------------------------------------------------------


def test_backoff_matches_spec_remote_sequence():
    ctime = 1_000_000.0
    dues = []
    now, retry = ctime, 0
    for _ in range(6):
        retry += 1
        now = next_attempt(ctime, retry, 400.0, now)
        dues.append(now - ctime)
    # ~6.7 min, 27 min, 1 h, 1.8 h, 2.8 h, 4 h after arrival (base 400 s: remote envelopes)
    assert dues == [400.0, 1600.0, 3600.0, 6400.0, 10000.0, 14400.0]


def test_backoff_skips_steps_already_past():
    assert next_attempt(0.0, 1, 400.0, 5000.0) == 6400.0  # 400, 1600, 3600 are past
    assert next_attempt(0.0, 1, 10.0, 0.0) == 10.0
    assert next_attempt(0.0, 1, 10.0, 10.0) == 40.0  # "past" includes now
    assert next_attempt(0.0, 1, 10.0, 1e9) > 1e9


def test_due_queue_orders_replaces_and_limits():
    def env(low: int) -> Envelope:
        return Envelope(id=0x11111111 << 32 | low, msgid=0x11111111, dispatcher="d", rcpt="r", dest="r")

    due = DueQueue()
    due.push(env(1), 30.0)
    due.push(env(2), 10.0)
    due.push(env(3), 20.0)
    due.push(env(1), 5.0)  # rescheduled earlier: the 30.0 entry is stale
    assert len(due) == 3
    ready, delay = due.batch(now=15.0, limit=10)
    assert [e.id & 0xFF for e in ready] == [1, 2] and delay == 5.0
    ready, delay = due.batch(now=100.0, limit=0)
    assert ready == [] and delay == 0.0
    ready, delay = due.batch(now=100.0, limit=10)
    assert [e.id & 0xFF for e in ready] == [3] and delay is None
    assert len(due) == 0


# -- outcomes ----------------------------------------------------------------------


async def no_dsn(envelope: Envelope) -> None:
    """A bounce hook for tests whose senders get no DSN."""


async def test_success_removes_the_envelopes(tmp_path):
    store, envelopes = await queue_with(tmp_path, nrcpt=3)
    delivered: list[str] = []

    async def deliver(envelope: Envelope) -> None:
        assert store.message_path(envelope.msgid).exists()
        delivered.append(envelope.dest)

    scheduler = Scheduler(store, deliver, bounce=no_dsn)
    for envelope in envelopes:
        scheduler.schedule(envelope)
    async with Running(scheduler):
        await wait_until(lambda: store.msgids() == [])
    assert sorted(delivered) == sorted(e.dest for e in envelopes)
    assert await QueueStore(tmp_path).open() == []


async def test_new_commits_reach_the_scheduler_through_on_commit(tmp_path):
    store = QueueStore(tmp_path)
    await store.open()
    delivered: list[int] = []

    async def deliver(envelope: Envelope) -> None:
        delivered.append(envelope.id)

    scheduler = Scheduler(store, deliver, bounce=no_dsn)
    store.on_commit = scheduler.schedule
    async with Running(scheduler):
        incoming = await store.create()
        incoming.write(b"hello\r\n")
        envelope = incoming.envelope(dispatcher="local", rcpt="a@b.example", dest="a@b.example")
        await store.commit(incoming, [envelope])
        await wait_until(lambda: delivered == [envelope.id] and store.msgids() == [])


async def test_tempfail_retries_with_backoff_and_saves_state(tmp_path):
    store, (envelope,) = await queue_with(tmp_path)
    attempts: list[float] = []
    seen_on_disk: list[Envelope] = []

    async def deliver(env: Envelope) -> None:
        attempts.append(time.time())
        seen_on_disk.append(await store.load(env.id))
        if len(attempts) < 3:
            raise TempFail(BUSY)

    scheduler = Scheduler(store, deliver, bounce=no_dsn, base_delay=0.05)
    scheduler.schedule(envelope)
    async with Running(scheduler):
        await wait_until(lambda: store.msgids() == [])
    assert len(attempts) == 3
    assert attempts[1] >= envelope.ctime + 0.05  # ctime + base * 1**2
    assert attempts[2] >= envelope.ctime + 0.05 * 4  # ctime + base * 2**2, or later
    assert [e.retry for e in seen_on_disk] == [0, 1, 2]
    second = seen_on_disk[1]
    assert second.errorline == "451 4.2.0 Mailbox busy"
    assert (second.esc_class, second.esc_code) == (4, "4.2.0")
    assert second.last_try >= attempts[0]


async def test_restart_keeps_the_retry_time(tmp_path):
    store, (envelope,) = await queue_with(tmp_path)
    now = time.time()
    waiting = envelope.replace(retry=1, last_try=now, ctime=now)
    await store.update(waiting)
    calls: list[Envelope] = []

    async def deliver(env: Envelope) -> None:
        calls.append(env)

    scheduler = Scheduler(store, deliver, bounce=no_dsn, base_delay=3600.0)
    scheduler.schedule(waiting)
    async with Running(scheduler):
        await asyncio.sleep(0.05)
        assert calls == [] and scheduler.pending == 1  # due in an hour, not now


async def test_permfail_bounces_then_removes(tmp_path):
    store, (envelope,) = await queue_with(tmp_path)
    bounced: list[Envelope] = []

    async def deliver(env: Envelope) -> None:
        raise PermFail(UNKNOWN)

    async def bounce(env: Envelope) -> None:
        assert store.evpids(env.msgid) == [env.id]  # still queued while the DSN is made
        bounced.append(env)

    scheduler = Scheduler(store, deliver, bounce=bounce)
    scheduler.schedule(envelope)
    async with Running(scheduler):
        await wait_until(lambda: store.msgids() == [])
    assert len(bounced) == 1
    assert (bounced[0].esc_class, bounced[0].esc_code) == (5, "5.1.1")
    assert bounced[0].errorline == "550 5.1.1 Invalid recipient"


async def test_no_scheduler_gives_up_without_a_bounce_hook(tmp_path):
    """No envelope leaves the queue without a DSN or an explicit remove."""
    store, _ = await queue_with(tmp_path)

    async def deliver(env: Envelope) -> None:
        raise PermFail(UNKNOWN)

    with pytest.raises(TypeError):
        Scheduler(store, deliver)  # type: ignore[call-arg]


async def test_failed_bounce_keeps_the_envelope_and_tries_again(tmp_path):
    store, (envelope,) = await queue_with(tmp_path)
    deliveries: list[Envelope] = []
    bounces: list[Envelope] = []

    async def deliver(env: Envelope) -> None:
        deliveries.append(env)
        raise PermFail(UNKNOWN)

    async def bounce(env: Envelope) -> None:
        bounces.append(env)
        if len(bounces) == 1:
            raise TempFail(Reply(421, "4.3.0", "Temporary Error"))

    scheduler = Scheduler(store, deliver, bounce=bounce, base_delay=0.02)
    scheduler.schedule(envelope)
    async with Running(scheduler):
        await wait_until(lambda: store.msgids() == [])
    assert len(deliveries) == 1  # not delivered again: only the bounce is retried
    assert len(bounces) == 2 and bounces[1].esc_class == 5


async def test_expired_envelope_is_bounced_not_delivered(tmp_path):
    store, (envelope,) = await queue_with(tmp_path, ctime=time.time() - 100, ttl=50.0)
    bounced: list[Envelope] = []

    async def deliver(env: Envelope) -> None:
        pytest.fail("an expired envelope was delivered")

    async def bounce(env: Envelope) -> None:
        bounced.append(env)

    scheduler = Scheduler(store, deliver, bounce=bounce)
    scheduler.schedule(envelope)
    async with Running(scheduler):
        await wait_until(lambda: store.msgids() == [])
    assert [(e.esc_code, e.errorline) for e in bounced] == [("4.4.7", "421 4.4.7 Envelope expired")]


async def test_tempfails_until_ttl_then_expire(tmp_path, caplog):
    store, (envelope,) = await queue_with(tmp_path, ttl=0.3)
    attempts = 0
    bounced: list[Envelope] = []

    async def deliver(env: Envelope) -> None:
        nonlocal attempts
        attempts += 1
        raise TempFail(BUSY)

    async def bounce(env: Envelope) -> None:
        bounced.append(env)

    scheduler = Scheduler(store, deliver, bounce=bounce, base_delay=0.05)
    scheduler.schedule(envelope)
    with caplog.at_level(logging.INFO, logger="postillion.queue"):
        async with Running(scheduler):
            await wait_until(lambda: store.msgids() == [])
    assert 1 <= attempts <= 3  # at ctime, +0.05, +0.2 (if on time); +0.45 is past the ttl
    assert len(bounced) == 1 and bounced[0].esc_code == "4.4.7"
    assert bounced[0].errorline == "421 4.4.7 Envelope expired (last error: 451 4.2.0 Mailbox busy)"
    assert bounced[0].retry == attempts
    assert "queue expire" in caplog.text and "result=Expire" in caplog.text


async def test_a_bug_in_deliver_does_not_lose_mail_or_stop_the_loop(tmp_path, caplog):
    store, envelopes = await queue_with(tmp_path, nrcpt=3)
    calls: dict[int, int] = {}

    async def deliver(env: Envelope) -> None:
        calls[env.id] = calls.get(env.id, 0) + 1
        if env.id == envelopes[0].id and calls[env.id] == 1:
            raise ZeroDivisionError("agent bug")

    scheduler = Scheduler(store, deliver, bounce=no_dsn, base_delay=0.02)
    for envelope in envelopes:
        scheduler.schedule(envelope)
    with caplog.at_level(logging.ERROR, logger="postillion.queue"):
        async with Running(scheduler):
            await wait_until(lambda: store.msgids() == [])
    assert calls[envelopes[0].id] == 2 and calls[envelopes[1].id] == 1
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)


async def test_in_flight_deliveries_are_bounded(tmp_path):
    store, envelopes = await queue_with(tmp_path, nrcpt=7)
    current = peak = done = 0

    async def deliver(env: Envelope) -> None:
        nonlocal current, peak, done
        current += 1
        peak = max(peak, current)
        await asyncio.sleep(0.02)
        current -= 1
        done += 1

    scheduler = Scheduler(store, deliver, bounce=no_dsn, max_inflight=2)
    for envelope in envelopes:
        scheduler.schedule(envelope)
    async with Running(scheduler):
        await wait_until(lambda: done == 7)
    assert peak == 2


async def test_stop_waits_a_bounded_time_and_keeps_the_envelope(tmp_path):
    store, (envelope,) = await queue_with(tmp_path)
    started = asyncio.Event()

    async def deliver(env: Envelope) -> None:
        started.set()
        await asyncio.sleep(3600)

    scheduler = Scheduler(store, deliver, bounce=no_dsn)
    scheduler.schedule(envelope)
    task = asyncio.create_task(scheduler.run())
    await asyncio.wait_for(started.wait(), 5)
    begin = time.monotonic()
    await asyncio.wait_for(scheduler.stop(timeout=0.1), 5)
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - begin < 2
    assert scheduler.inflight == 0
    assert await QueueStore(tmp_path).open() == [envelope]


async def test_cancelling_run_cancels_deliveries(tmp_path):
    store, (envelope,) = await queue_with(tmp_path)
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def deliver(env: Envelope) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    scheduler = Scheduler(store, deliver, bounce=no_dsn)
    scheduler.schedule(envelope)
    task = asyncio.create_task(scheduler.run())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert cancelled.is_set() and scheduler.inflight == 0
    assert store.evpids(envelope.msgid) == [envelope.id]


async def test_the_delivered_hook_runs_before_removal_and_cannot_break_it(tmp_path):
    store, (envelope,) = await queue_with(tmp_path)
    seen: list[bool] = []

    async def deliver(env: Envelope) -> None:
        return None

    async def delivered(env: Envelope) -> None:
        seen.append(bool(store.msgids()))       # the message is still queued
        raise RuntimeError("a broken notice")

    scheduler = Scheduler(store, deliver, bounce=no_dsn, delivered=delivered)
    scheduler.schedule(envelope)
    async with Running(scheduler):
        await wait_until(lambda: store.msgids() == [])
    assert seen == [True]
