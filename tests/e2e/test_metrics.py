"""`metrics listen on`: the Prometheus endpoint of the real daemon
(docs/metrics.md).  The parent binds it, the queue process answers with
what every process counted; bad requests cost nothing; a daemon without
the statement binds nothing."""

from __future__ import annotations

import os
import smtplib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.control.ctlrun import ok_json
from tests.e2e import procs
from tests.e2e.conftest import free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def with_metrics(daemon) -> int:
    port = free_port()
    daemon.config.write_text(daemon.config.read_text()
                             + f"metrics listen on 127.0.0.1 port {port}\n")
    return port


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = answer.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def raw(port: int, request: bytes) -> bytes:
    """What the endpoint answers to `request`, up to its closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def send_mail(d, rcpts: list[str]) -> dict[str, int]:
    """One message; the RCPT code of each recipient."""
    codes = {}
    with smtplib.SMTP(d.host, d.port, timeout=10) as client:
        client.ehlo("client.example")
        client.mail("bob@example.test")
        for rcpt in rcpts:
            codes[rcpt] = client.rcpt(rcpt)[0]
        assert client.data(b"Subject: metrics\r\n\r\nhello\r\n")[0] == 250
    return codes


def test_the_counters_move_as_mail_comes_and_goes(daemon):
    port = with_metrics(daemon)
    daemon.start()
    before = scrape(port)
    assert value(before, "postillion_smtp_sessions_active") == 0
    codes = send_mail(daemon, ["alice@example.test", "nobody@example.test"])
    assert codes == {"alice@example.test": 250, "nobody@example.test": 550}
    daemon.wait_delivered("alice")
    deadline = time.monotonic() + 10
    while True:       # the queue counts the delivery once the parent answered
        after = scrape(port)
        if value(after, "postillion_deliveries_total", agent="mda", result="ok") >= 1 \
                and value(after, "postillion_queue_envelopes") == 0 \
                or time.monotonic() > deadline:
            break
        time.sleep(0.1)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # The probe of wait_listening was a session too: at least ours.
    # (By the client's address family since the sessions counter has one.)
    assert moved("postillion_smtp_sessions_total", family="inet4") >= 1
    assert moved("postillion_queue_envelopes_enqueued_total") == 1
    assert moved("postillion_queue_envelopes_dequeued_total", reason="delivered") == 1
    assert moved("postillion_smtp_messages_accepted_total") == 1
    assert moved("postillion_deliveries_total", agent="mda", result="ok") == 1
    assert moved("postillion_smtp_recipients_refused_total", code="5.1.1") == 1
    assert moved("postillion_table_lookup_seconds_count", backend="sqlite") >= 2
    assert value(after, "postillion_table_lookup_seconds_bucket", backend="sqlite", le="+Inf") \
        == value(after, "postillion_table_lookup_seconds_count", backend="sqlite")
    assert moved("postillion_queue_commit_seconds_count") == 1
    assert value(after, "postillion_queue_commit_seconds_sum") > 0
    assert value(after, "postillion_queue_envelopes") == 0
    assert value(after, "postillion_queue_oldest_envelope_age_seconds") == 0
    assert value(after, "postillion_smtp_sessions_active") == 0
    # `show stats` reads the same counts: each process's own values, summed.
    shown = ok_json(daemon.spool, "show stats")
    assert shown["scheduler.delivery.ok"] == sum(
        value(after, "postillion_deliveries_total", agent=agent, result="ok")
        for agent in ("mda", "mta", "bounce"))
    assert shown["queue.envelope.enqueued"] == value(after, "postillion_queue_envelopes_enqueued_total")
    assert shown["smtp.session.inet4"] == value(after, "postillion_smtp_sessions_total", family="inet4")
    assert shown["smtp.session.closed"] == sum(
        value(after, "postillion_smtp_sessions_total", family=family)
        for family in ("local", "inet4", "inet6"))


def test_queued_mail_shows_in_the_queue_gauges_and_counts_survive_a_queue_restart(daemon):
    port = with_metrics(daemon)
    daemon.start("-P", "mda")            # held: accepted, not delivered
    send_mail(daemon, ["alice@example.test"])
    time.sleep(1.1)
    first = scrape(port)
    assert value(first, "postillion_queue_envelopes") == 1
    assert value(first, "postillion_queue_oldest_envelope_age_seconds") >= 1
    accepted = value(first, "postillion_smtp_messages_accepted_total")
    assert accepted >= 1
    [queue] = procs.roles(daemon.proc.pid, "queue")
    os.kill(queue, 9)
    daemon.wait_log("restarting it in")
    deadline = time.monotonic() + 20
    while True:       # the parent hands the same socket to the new queue process
        assert time.monotonic() < deadline, daemon.log()
        try:
            again = scrape(port)
            if value(again, "postillion_queue_envelopes") == 1:
                break
        except OSError:
            pass
        time.sleep(0.2)
    assert procs.roles(daemon.proc.pid, "queue") != [queue]
    # What the dead process counted is still in the sums; its gauge is not.
    assert value(again, "postillion_smtp_messages_accepted_total") == accepted


def test_only_get_and_head_of_metrics_and_bad_requests_hurt_nothing(daemon):
    port = with_metrics(daemon)
    daemon.start()
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
    assert info.value.code == 404
    assert raw(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n").startswith(
        b"HTTP/1.1 405 ")
    head = raw(port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
    assert raw(port, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n").startswith(
        b"HTTP/1.1 400 ")
    # A 1 MB header is refused after the first 8 KiB: read, answered, closed.
    huge = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 1_000_000 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(huge)
        except (BrokenPipeError, ConnectionResetError):
            pass      # closed on us mid-way: what we wanted
        try:
            answer = s.recv(4096)
        except ConnectionResetError:
            answer = b"HTTP/1.1 400 (reset)"
    assert answer.startswith(b"HTTP/1.1 400 ")
    # Still serving, and still taking mail.
    assert value(scrape(port), "postillion_smtp_sessions_active") == 0
    send_mail(daemon, ["alice@example.test"])
    daemon.wait_delivered("alice")


def test_without_the_statement_nothing_is_bound(daemon):
    daemon.start()
    family = [daemon.proc.pid, *procs.children(daemon.proc.pid)]
    listening = {port for pid in family for port in procs.listening_ports(pid)}
    assert listening == {daemon.port}
    assert not (daemon.spool / "metrics").exists()
    for pid in procs.children(daemon.proc.pid):
        environ = open(f"/proc/{pid}/environ", "rb").read()
        assert b"POSTILLION_METRICS_DIR" not in environ
        assert b"PROMETHEUS_MULTIPROC_DIR" not in environ


def test_a_metrics_port_in_use_stops_the_start_naming_the_statement(daemon):
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        daemon.config.write_text(daemon.config.read_text()
                                 + f"metrics listen on 127.0.0.1 port {port}\n")
        result = subprocess.run(
            [sys.executable, "-m", "postillion.cli", "run", "-d", "-f", str(daemon.config),
             "-s", str(daemon.spool)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    line = len(daemon.config.read_text().splitlines())
    assert f"{daemon.config}:{line}:1: cannot listen on 127.0.0.1 port {port} for metrics: " \
           "Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_names_a_bad_statement(tmp_path):
    conf = tmp_path / "smtpd.conf"
    conf.write_text("metrics listen on 127.0.0.1 port 9100\nmetrics listen on eth0 port 9100\n")
    result = subprocess.run([sys.executable, "-m", "postillion.cli", "check", "-f", str(conf)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"{conf}:2:19: expected an IP address" in result.stderr
