"""`show stats` is read from the Prometheus metrics (postillion/stats.py):
each event counted once, by a metric object, and named as smtpctl does.

In-process, and in prometheus_client's multiprocess mode (what `metrics
listen on` turns on), where each process must read its own values only --
else the queue process's sum over processes would count events twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from postillion import metrics, stats


def _moved(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after.get(name, 0) - before.get(name, 0)
            for name in set(before) | set(after) if after.get(name, 0) != before.get(name, 0)}


def test_the_snapshot_names_what_the_metrics_counted() -> None:
    # Other tests of this run may have counted in this process: compare.
    before = stats.snapshot()
    for family in ("local", "inet4", "inet4", "inet6"):
        metrics.SMTP_SESSIONS.labels(family).inc()
        metrics.SMTP_SESSIONS_ACTIVE.inc()
    metrics.SMTP_SESSIONS_ACTIVE.dec()                      # one of them ended
    metrics.SMTP_SESSIONS_PAUSED.inc()
    metrics.ENVELOPES_ENQUEUED.inc(3)
    for reason in ("delivered", "failed", "expired", "removed", "removed"):
        metrics.ENVELOPES_DEQUEUED.labels(reason).inc()
    metrics.BOUNCES_QUEUED.inc()
    metrics.DELIVERY_LOOPS.inc()
    for agent, result in (("mda", "ok"), ("mta", "ok"), ("mta", "tempfail"),
                          ("bounce", "permfail"), ("mta", "permfail")):
        metrics.DELIVERIES.labels(agent, result).inc()
    metrics.ROUTE_ERRORS.labels("connect").inc()            # not a show-stats name
    after = stats.snapshot()
    assert _moved(before, after) == {
        "smtp.session": 3, "smtp.session.closed": 1, "smtp.session.paused": 1,
        "smtp.session.local": 1, "smtp.session.inet4": 2, "smtp.session.inet6": 1,
        "queue.envelope.enqueued": 3, "queue.envelope.dequeued": 5, "queue.bounce": 1,
        "scheduler.envelope.expired": 1, "scheduler.envelope.removed": 2,
        "scheduler.delivery.ok": 2, "scheduler.delivery.tempfail": 1,
        "scheduler.delivery.permfail": 2, "scheduler.delivery.loop": 1,
        "mta.relay.ok": 1, "mta.relay.tempfail": 1, "mta.relay.permfail": 1,
    }
    assert all(type(v) is int for v in after.values())
    for _ in range(3):
        metrics.SMTP_SESSIONS_ACTIVE.dec()
    assert stats.snapshot()["smtp.session"] == before["smtp.session"]


def test_snapshots_add_up() -> None:
    total = {"smtp.session": 1, "queue.bounce": 2}
    assert stats.add(total, {"smtp.session": 2, "mta.relay.ok": 1, "bogus": True}) == \
        {"smtp.session": 3, "queue.bounce": 2, "mta.relay.ok": 1}


#: Run in a process of its own, in multiprocess mode: count N of each, wait
#: for a line on stdin (so that both processes are alive at once), then
#: answer its snapshot and the class prometheus_client keeps values in.
_CHILD = """
import json, sys
from postillion import metrics, stats
import prometheus_client.values
n = int(sys.argv[1])
for _ in range(n):
    metrics.SMTP_SESSIONS.labels("inet4").inc()
    metrics.DELIVERIES.labels("mta", "ok").inc()
    metrics.ENVELOPES_DEQUEUED.labels("expired").inc()
metrics.SMTP_SESSIONS_ACTIVE.inc()
print("counted", flush=True)
sys.stdin.readline()
print(json.dumps({"stats": stats.snapshot(),
                  "values": prometheus_client.values.ValueClass.__qualname__}), flush=True)
"""


def test_in_multiprocess_mode_each_process_reads_its_own_values(tmp_path: Path) -> None:
    env = {**os.environ, metrics.DIR_ENV: str(tmp_path), "PYTHONPATH": os.pathsep.join(sys.path)}
    children = [subprocess.Popen([sys.executable, "-c", _CHILD, str(n)], env=env, text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                for n in (2, 5)]
    try:
        for child in children:     # both counted, both alive, sharing one directory
            assert child.stdout is not None and child.stdout.readline() == "counted\n"
        answers = [json.loads(child.communicate("\n", timeout=30)[0]) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)
    # Files, not memory: MultiProcessValue's memory-mapped value class.
    assert all(a["values"].startswith("MultiProcessValue.") for a in answers), answers
    for n, answer in zip((2, 5), answers):
        assert answer["stats"] == {
            "smtp.session": 1, "smtp.session.inet4": n, "smtp.session.closed": n - 1,
            "scheduler.delivery.ok": n, "mta.relay.ok": n,
            "queue.envelope.dequeued": n, "scheduler.envelope.expired": n,
        }
    assert len(list(tmp_path.glob("counter_*.db"))) == 2          # one per process
    # What the endpoint serves is the sum over both processes' files.
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    assert registry.get_sample_value("postillion_smtp_sessions_total", {"family": "inet4"}) == 7
    assert registry.get_sample_value("postillion_deliveries_total",
                                     {"agent": "mta", "result": "ok"}) == 7
