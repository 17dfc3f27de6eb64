"""The scheduler: hands each queued envelope to its agent and applies the result.

Every envelope the queue accepted ends in exactly one of: delivered (removed),
retried later with backoff (docs/architecture.md), expired after its ttl, or failed
permanently; the last two go through the bounce hook before removal, so the
sender hears about mail we give up on.  Envelopes are removed only after
delivery or bounce: a crash may repeat a delivery, never lose one.

Due times live in a heap (`DueQueue`), so each wake-up costs O(log n) in the
work due, never a scan of the queue (docs/architecture.md, Performance shape).  The
agents are handed in by the daemon; this module knows none of them.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Final, Protocol

from postillion import metrics
from postillion.errors import MailError, PermFail, Reply, TempFail
from postillion.queue.envelope import Envelope

log = logging.getLogger("postillion.queue")

Deliver = Callable[[Envelope], Awaitable[None]]
"""An agent: returns on success, raises TempFail or PermFail otherwise."""

Bounce = Callable[[Envelope], Awaitable[None]]
"""Queues a DSN for an envelope we give up on; esc_class/esc_code/errorline
say why (5 = permanent failure, 4.4.7 = expired).  Raising keeps the
envelope, and the bounce is tried again later.  Deciding that the sender
gets no DSN (null sender, NOTIFY=NEVER) is the hook's to do and to log."""

Delivered = Callable[[Envelope], Awaitable[None]]
"""After a successful delivery, before the envelope (and perhaps its
message) goes: may queue a "delivered"/"relayed" DSN (NOTIFY=SUCCESS).
Its failures are logged and cost the delivery nothing."""

Warn = Callable[[Envelope, float], Awaitable[Envelope]]
"""After a temporary failure, with the next attempt's time: may queue a
"delayed" DSN, and returns the envelope to save (it records what was
reported).  Its failures never cost the envelope anything."""

MAX_SLEEP: Final = 60.0
"""Longest single sleep in seconds, so a wall-clock jump cannot stall us."""

STOP_TIMEOUT: Final = 30.0
"""Seconds stop() lets in-flight deliveries finish before cancelling them."""

ERRORLINE_MAX: Final = 1000
INTERNAL_ERROR: Final = Reply(451, "4.3.0", "Internal error")
EXPIRED: Final = Reply(421, "4.4.7", "Envelope expired")
#: The subsystem an envelope type's deliveries belong to, for `pause mda|mta`
#: (a bounce envelope is delivered locally).
SUBSYSTEM: Final = {"mda": "mda", "bounce": "mda", "mta": "mta"}


class EnvelopeStore(Protocol):
    """What the scheduler needs of the store (QueueStore, or a test double)."""

    async def update(self, envelope: Envelope) -> None: ...

    async def remove(self, envelope: Envelope) -> None: ...


def next_attempt(ctime: float, retry: int, base: float, after: float) -> float:
    """When to try again after the `retry`-th temporary failure (docs/architecture.md).

    `ctime + base * retry**2`; if that is not after `after` (attempts ran
    late, or the daemon was down), the step grows until it is, so retries
    keep the schedule counted from arrival instead of bunching up.
    """
    if base <= 0:
        raise ValueError("base delay must be positive")
    step = max(retry, 1, math.isqrt(int(max(0.0, after - ctime) / base)))
    while (due := ctime + base * step * step) <= after:
        step += 1
    return due


class DueQueue:
    """Envelopes waiting for their due time, as a heap keyed on it.

    Pushing an envelope already waiting replaces its due time; the old heap
    entry becomes stale and is skipped when it surfaces.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int]] = []  # (due, seq, evpid)
        self._entries: dict[int, tuple[int, float, Envelope]] = {}  # evpid -> (seq, due, env)
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, evpid: int) -> bool:
        return evpid in self._entries

    def push(self, envelope: Envelope, due: float) -> None:
        seq = next(self._seq)
        self._entries[envelope.id] = (seq, due, envelope)
        heapq.heappush(self._heap, (due, seq, envelope.id))
        if len(self._heap) > 2 * len(self._entries) + 64:
            self._heap = [(d, s, e) for e, (s, d, _) in self._entries.items()]
            heapq.heapify(self._heap)

    def discard(self, evpid: int) -> None:
        self._entries.pop(evpid, None)

    def get(self, evpid: int) -> tuple[float, Envelope] | None:
        """(due, envelope) of a waiting envelope, None if it is not waiting."""
        entry = self._entries.get(evpid)
        return None if entry is None else (entry[1], entry[2])
    def envelopes(self) -> Iterator[Envelope]:
        return (entry[2] for entry in self._entries.values())

    def batch(self, now: float, limit: int) -> tuple[list[Envelope], float | None]:
        """Pop up to `limit` envelopes due at `now`; also return the seconds
        until the next due one (0 if more are due), None if none waits."""
        ready: list[Envelope] = []
        while self._heap:
            due, seq, evpid = self._heap[0]
            entry = self._entries.get(evpid)
            if entry is None or entry[0] != seq:
                heapq.heappop(self._heap)
                continue
            if due > now:
                return ready, due - now
            if len(ready) >= limit:
                return ready, 0.0
            heapq.heappop(self._heap)
            del self._entries[evpid]
            ready.append(entry[2])
        return ready, None


class Scheduler:
    """Runs deliveries as they fall due, at most `max_inflight` at a time.

    `base_delay` is the backoff base for local (`mda`) and bounce
    envelopes (10 s), `base_delay_mta` for remote ones (400 s).  `bounce` is
    called for expired and permanently failed envelopes before they are
    removed: there is no way to give up on an envelope without it (an
    envelope leaves the queue delivered, bounced, or by an explicit
    remove).  `warn` is called after each temporary failure.  `clock` gives
    epoch seconds (tests pass a fake one).
    """

    def __init__(
        self,
        store: EnvelopeStore,
        deliver: Deliver,
        *,
        bounce: Bounce,
        warn: Warn | None = None,
        delivered: Delivered | None = None,
        base_delay: float = 10.0,
        base_delay_mta: float = 400.0,
        max_inflight: int = 5000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if base_delay <= 0 or base_delay_mta <= 0 or max_inflight < 1:
            raise ValueError("base delays and max_inflight must be positive")
        self._store = store
        self._deliver = deliver
        self._bounce = bounce
        self._warn = warn
        self._delivered = delivered
        self._base_delay = base_delay
        self._base_delay_mta = base_delay_mta
        self._max_inflight = max_inflight
        self._clock = clock
        self._due = DueQueue()
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._since: dict[int, float] = {}      # evpid -> when its attempt began
        self._attempting: dict[int, Envelope] = {}   # the envelopes of _inflight
        #: Subsystems not dispatched (`pause mda|mta`, `run -P`); their due
        #: envelopes wait in _parked (evpid -> (due, envelope)).
        self.paused: set[str] = set()
        self._parked: dict[int, tuple[float, Envelope]] = {}
        #: Envelopes held by `pause envelope`: never due until resumed.
        #: In memory only: a restarted queue process schedules them again.
        self._held: dict[int, Envelope] = {}
        #: What to do with an envelope in flight once its attempt ends:
        #: "hold" or "remove" (`pause envelope`, `remove` of one in flight).
        self._after: dict[int, str] = {}
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._run_task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Envelopes waiting for their due time."""
        return len(self._due)

    @property
    def inflight(self) -> int:
        """Envelopes being delivered now."""
        return len(self._inflight)

    @property
    def size(self) -> int:
        """Every envelope the scheduler holds: waiting, parked, held, in flight."""
        return len(self._due) + len(self._parked) + len(self._held) + len(self._inflight)

    @property
    def held(self) -> int:
        return len(self._held)

    def runstate(self, evpid: int) -> tuple[str, float]:
        """What `show queue` prints: ("inflight", seconds since the attempt
        began), ("pending", seconds until due) or ("offline", 0) for an
        envelope not scheduled (held by `pause envelope`, or not yet
        announced)."""
        now = self._clock()
        if evpid in self._inflight:
            return "inflight", max(0.0, now - self._since.get(evpid, now))
        waiting = self._due.get(evpid) or self._parked.get(evpid)
        if waiting is not None:
            return "pending", max(0.0, waiting[0] - now)
        return "offline", 0.0
    def census(self) -> tuple[int, float | None]:
        """The envelopes held (waiting, being delivered, parked by a paused
        subsystem or held by `pause envelope`) and the oldest one's ctime,
        None when there is none: for the metrics endpoint, which asks when
        scraped (one pass over the queue, never per event)."""
        # One being retried is briefly in both: counted once.
        held = itertools.chain(
            self._due.envelopes(), (env for _, env in self._parked.values()), self._held.values(),
            (e for e in self._attempting.values() if e.id not in self._due))
        count, oldest = 0, None
        for envelope in held:
            count += 1
            if oldest is None or envelope.ctime < oldest:
                oldest = envelope.ctime
        return count, oldest

    # -- what `postillion ctl` changes -----------------------------------------

    def pause(self, subsystem: str) -> None:
        """Stop dispatching `subsystem`'s envelopes (mda or mta); the ones
        in flight finish."""
        self.paused.add(subsystem)
        self._wakeup.set()

    def resume(self, subsystem: str) -> None:
        self.paused.discard(subsystem)
        for evpid, (due, envelope) in list(self._parked.items()):
            if SUBSYSTEM.get(envelope.type, "mda") == subsystem:
                del self._parked[evpid]
                self._due.push(envelope, due)
        self._wakeup.set()

    def make_due(self, evpid: int) -> bool:
        """`schedule`: due now, whatever its backoff said (the retry count
        stays, so the next failure's wait is the one it would have had).
        False for an envelope in flight, held or not scheduled."""
        waiting = self._due.get(evpid)
        if waiting is not None:
            self._due.push(waiting[1], self._clock())
            self._wakeup.set()
            return True
        parked = self._parked.get(evpid)
        if parked is not None:
            self._parked[evpid] = (self._clock(), parked[1])
            return True
        return False

    def hold(self, evpid: int) -> str | None:
        """`pause envelope`: "held", "after" (in flight: held when its
        attempt ends, if it stays queued) or None (not scheduled here)."""
        if evpid in self._held:
            return "held"
        if evpid in self._inflight:
            self._after[evpid] = "hold"
            return "after"
        entry = self._due.get(evpid) or self._parked.get(evpid)
        if entry is None:
            return None
        self._due.discard(evpid)
        self._parked.pop(evpid, None)
        self._held[evpid] = entry[1]
        return "held"

    def release(self, evpid: int) -> bool:
        """`resume envelope`: scheduled again at the time its retries say."""
        if self._after.get(evpid) == "hold":
            del self._after[evpid]
            return True
        envelope = self._held.pop(evpid, None)
        if envelope is None:
            return False
        self.schedule(envelope)
        return True

    def held_ids(self) -> list[int]:
        return sorted(self._held) + sorted(e for e, what in self._after.items() if what == "hold")

    async def remove(self, envelope: Envelope) -> str:
        """`remove`: gone without a bounce, "removed" now, or "after" its
        attempt in flight ends (unless that attempt delivered it first)."""
        evpid = envelope.id
        if evpid in self._inflight:
            self._after[evpid] = "remove"
            return "after"
        self._due.discard(evpid)
        self._parked.pop(evpid, None)
        self._held.pop(evpid, None)
        await self._store.remove(envelope)
        metrics.ENVELOPES_DEQUEUED.labels("removed").inc()
        log.info("queue remove evpid=%016x from=<%s> to=<%s> result=Removed",
                 evpid, envelope.sender, envelope.dest)
        return "removed"

    def schedule(self, envelope: Envelope) -> None:
        """Queue an envelope: due now if never tried (retry == 0), else at its
        retry time, recomputed from ctime, retry and last_try (so a restart
        keeps the schedule).  An envelope being delivered is left alone: its
        outcome decides what happens next."""
        if envelope.id in self._inflight:
            log.debug("queue schedule-skipped evpid=%016x reason=inflight", envelope.id)
            return
        if envelope.id in self._held:
            self._held[envelope.id] = envelope
            return
        if envelope.id in self._parked:
            self._parked[envelope.id] = (self._parked[envelope.id][0], envelope)
            return
        if envelope.retry == 0:
            due = self._clock()
        else:
            base = self._base(envelope)
            due = min(next_attempt(envelope.ctime, envelope.retry, base, envelope.last_try), envelope.expires)
        self._due.push(envelope, due)
        self._wakeup.set()

    async def run(self) -> None:
        """Dispatch due envelopes until stop(); sleeps until the earliest due
        one or a schedule()/completion wakes it.  Cancelling it cancels the
        deliveries in flight (their envelopes stay queued, unchanged)."""
        if self._run_task is not None:
            raise RuntimeError("Scheduler.run() is already running")
        self._run_task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping:
                self._wakeup.clear()
                room = self._max_inflight - len(self._inflight)
                ready, delay = self._due.batch(self._clock(), room)
                for envelope in ready:
                    if SUBSYSTEM.get(envelope.type, "mda") in self.paused:
                        self._parked[envelope.id] = (self._clock(), envelope)
                        continue
                    self._since[envelope.id] = self._clock()
                    self._attempting[envelope.id] = envelope
                    self._inflight[envelope.id] = loop.create_task(self._attempt(envelope))
                if len(self._inflight) >= self._max_inflight:
                    delay = None  # a completion wakes us
                handle = None if delay is None else loop.call_later(min(delay, MAX_SLEEP), self._wakeup.set)
                try:
                    await self._wakeup.wait()
                finally:
                    if handle is not None:
                        handle.cancel()
        finally:
            if not self._stopping:
                await _cancel_all(list(self._inflight.values()))
            self._run_task = None

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop dispatching, let in-flight deliveries finish for up to
        `timeout` seconds, then cancel the rest (they stay queued and are
        tried again at the next start)."""
        self._stopping = True
        self._wakeup.set()
        tasks = list(self._inflight.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=timeout)
            if late:
                log.warning("queue stop cancelled=%d reason=timeout", len(late))
                await _cancel_all(list(late))
        run_task = self._run_task
        if run_task is not None and run_task is not asyncio.current_task():
            await asyncio.wait([run_task])

    # -- one attempt ---------------------------------------------------------

    async def _attempt(self, envelope: Envelope) -> None:
        try:
            if self._clock() >= envelope.expires:
                await self._expire(envelope)
            elif envelope.esc_class == 5:  # failed for good, bounce not yet queued
                await self._give_up(envelope, "permfail")
            else:
                await self._try(envelope)
        except Exception:
            # A bug here must neither lose the envelope nor kill the loop.
            log.exception("queue scheduler-error evpid=%016x", envelope.id)
            self._due.push(envelope, self._clock() + self._base(envelope))
        finally:
            self._inflight.pop(envelope.id, None)
            self._since.pop(envelope.id, None)
            self._attempting.pop(envelope.id, None)
            await self._after_attempt(envelope)
            self._wakeup.set()

    async def _after_attempt(self, envelope: Envelope) -> None:
        """Apply a `pause envelope` or `remove` that came while in flight."""
        what = self._after.pop(envelope.id, None)
        entry = self._due.get(envelope.id)
        if what is None or entry is None:
            return          # nothing asked, or the attempt ended its queue life
        if what == "hold":
            self._due.discard(envelope.id)
            self._held[envelope.id] = entry[1]
        elif what == "remove":
            try:
                await self.remove(entry[1])
            except TempFail:
                pass        # logged by the store; it may come back at restart

    async def _try(self, envelope: Envelope) -> None:
        try:
            await self._deliver(envelope)
        except TempFail as e:
            await self._tempfail(envelope, e.reply)
        except PermFail as e:
            failed = envelope.replace(
                last_try=self._clock(), esc_class=5, esc_code=e.reply.enhanced, errorline=_errorline(e.reply)
            )
            await self._give_up(failed, "permfail")
        except MailError as e:
            await self._tempfail(envelope, e.reply)
        except Exception:
            log.exception("queue agent-error evpid=%016x result=TempFail", envelope.id)
            await self._tempfail(envelope, INTERNAL_ERROR)
        else:
            if self._delivered is not None:
                try:
                    await self._delivered(envelope)
                except Exception:
                    log.exception("queue delivered-hook-failed evpid=%016x", envelope.id)
            await self._forget(envelope, "delivered")

    async def _tempfail(self, envelope: Envelope, reply: Reply) -> None:
        now = self._clock()
        envelope = envelope.replace(
            retry=envelope.retry + 1, last_try=now, esc_class=4, esc_code=reply.enhanced, errorline=_errorline(reply)
        )
        if now >= envelope.expires:
            await self._expire(envelope)
            return
        due = min(next_attempt(envelope.ctime, envelope.retry, self._base(envelope), now), envelope.expires)
        if self._warn is not None:
            try:
                envelope = await self._warn(envelope, due)
            except Exception:
                log.exception("queue warn-failed evpid=%016x", envelope.id)
        if await self._save(envelope):
            self._due.push(envelope, due)
            log.debug("queue retry evpid=%016x retry=%d next=%.0fs", envelope.id, envelope.retry, due - now)

    async def _expire(self, envelope: Envelope) -> None:
        log.info(
            "queue expire evpid=%016x from=<%s> to=<%s> ttl=%.0fs result=Expire",
            envelope.id, envelope.sender, envelope.dest, envelope.ttl,
        )
        reply = EXPIRED
        if envelope.errorline:  # keep the last error for the sender's DSN
            reply = Reply(EXPIRED.code, EXPIRED.enhanced, f"{EXPIRED.text} (last error: {envelope.errorline})")
        expired = envelope.replace(esc_class=4, esc_code=EXPIRED.enhanced, errorline=_errorline(reply))
        await self._give_up(expired, "expire")

    async def _give_up(self, envelope: Envelope, why: str) -> None:
        """Bounce, then remove.  If the bounce cannot be queued, keep the
        envelope (with its outcome saved) and try the bounce again later."""
        try:
            await self._bounce(envelope)
        except Exception as e:
            if isinstance(e, MailError):
                log.warning("queue bounce-failed evpid=%016x reason=%s error=%r",
                            envelope.id, why, e.reason)
            else:
                log.exception("queue bounce-failed evpid=%016x reason=%s", envelope.id, why)
            now = self._clock()
            envelope = envelope.replace(retry=envelope.retry + 1, last_try=now)
            if await self._save(envelope):
                self._due.push(envelope, next_attempt(envelope.ctime, envelope.retry, self._base(envelope), now))
            return
        await self._forget(envelope, "expired" if why == "expire" else "failed")

    async def _save(self, envelope: Envelope) -> bool:
        """Persist the new retry state; False if the envelope is gone."""
        try:
            await self._store.update(envelope)
        except KeyError:
            log.info("queue envelope-gone evpid=%016x", envelope.id)
            return False
        except TempFail:
            pass  # logged by the store; the old state on disk is intact, keep going in memory
        return True

    async def _forget(self, envelope: Envelope, reason: str) -> None:
        """Out of the queue, counted by `reason` (metrics.DEQUEUE_REASONS):
        the delivery attempts themselves are counted by the agents."""
        metrics.ENVELOPES_DEQUEUED.labels(reason).inc()
        try:
            await self._store.remove(envelope)
        except TempFail:
            pass  # logged by the store; at worst a duplicate delivery after restart

    def _base(self, envelope: Envelope) -> float:
        return self._base_delay_mta if envelope.type == "mta" else self._base_delay


def _errorline(reply: Reply) -> str:
    """The reply as one printable line (a peer may send NUL or other bytes)."""
    return "".join(c if c.isprintable() else "?" for c in str(reply)[:ERRORLINE_MAX])


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
