"""Mail leaves the host: the daemon relays by MX, through a real DNS server
on loopback (dnsmasq, tests/dnsserver.py), to receiving servers on port 25
of their own loopback addresses; failures come back to a local sender as
RFC 3464 bounces.

The world (the daemon in the test's event loop, the DNS server, the
peers' addresses) is tests/e2e/relayworld.py's.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import time

import pytest

from tests.dnsserver import Zones
from tests.e2e.relayworld import dns, net, receiver, world  # noqa: F401  (fixtures)
from tests.mta.peers import Conn, Peer, dialogue


async def test_mx_by_preference_and_a_dead_host_skipped(dns, world):
    base = net()
    zones = (Zones().mx("remote.test", 10, "mx1.remote.test").mx("remote.test", 20, "mx2.remote.test")
             .host("mx1.remote.test", f"{base}.2").host("mx2.remote.test", f"{base}.3")
             .mx("dead.test", 10, "mx1.dead.test").mx("dead.test", 20, "mx2.dead.test")
             .host("mx1.dead.test", f"{base}.4").host("mx2.dead.test", f"{base}.3"))
    server = dns(zones)
    w = await world(server.port)
    async with Peer(receiver([]), host=f"{base}.2", port=25) as mx1, \
            Peer(receiver([]), host=f"{base}.3", port=25) as mx2:
        await w.send(["bob@remote.test"])
        await w.wait_log("result=Ok")
        assert len(mx1.conns) == 1 and not mx2.conns     # the best MX
        assert b"Subject: hello" in mx1.conns[0].messages[0]
        # dead.test's best MX (.4) refuses connections: its second (.3) gets it.
        await w.send(["carol@dead.test"])
        deadline = time.monotonic() + 20
        while not mx2.conns or not mx2.conns[0].messages:
            assert time.monotonic() < deadline, "\n".join(w.loop_log)
            await asyncio.sleep(0.05)
    log = await w.wait_log("to=<carol@dead.test>")
    assert f'relay="{base}.3 (mx2.dead.test)"' in log
    assert "mta error" in log                          # the dead route, logged
    await w.wait_empty()


async def test_a_5xx_at_rcpt_bounces_to_the_local_sender(dns, world):
    base = net()
    server = dns(Zones().mx("remote.test", 10, "mx.remote.test").host("mx.remote.test", f"{base}.2"))
    w = await world(server.port)

    def rcpt(address: str) -> str:
        return "550 5.1.1 No such user here\r\n" if address.startswith("nobody") else "250 2.1.5 Ok\r\n"

    async with Peer(receiver([], rcpt=rcpt), host=f"{base}.2", port=25) as mx:
        await w.send(["nobody@remote.test", "bob@remote.test"])
        [dsn_path] = await w.wait_mailbox("alice")
    assert len(mx.conns[0].messages) == 1                        # bob's copy went
    dsn = email.message_from_bytes(dsn_path.read_bytes(), policy=email.policy.default)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    assert dsn["Subject"] == "Delivery status notification: failed"
    assert dsn["From"].addresses[0].username == "MAILER-DAEMON"
    text, status, original = dsn.get_payload()
    report = status.as_string()
    assert "Final-Recipient: rfc822;nobody@remote.test" in report.replace("rfc822; ", "rfc822;")
    assert "Action: failed" in report and "Status: 5.1.1" in report
    assert "No such user here" in report
    assert "bob@remote.test" not in report
    await w.wait_empty()


@pytest.mark.parametrize("domain, outcome", [
    ("nullmx.test", "PermFail"), ("nx.test", "PermFail"), ("broken.test", "TempFail")])
async def test_dns_answers_decide_permanent_or_temporary(dns, world, domain, outcome):
    server = dns(Zones().null_mx("nullmx.test").servfail("broken.test").txt("other.test"))
    w = await world(server.port)
    await w.send([f"someone@{domain}"])
    if outcome == "PermFail":
        [dsn_path] = await w.wait_mailbox("alice")
        dsn = email.message_from_bytes(dsn_path.read_bytes(), policy=email.policy.default)
        assert f"someone@{domain}" in dsn.get_payload()[1].as_string()
        await w.wait_empty()
    else:
        log = await w.wait_log("result=TempFail")     # the attempt is over: a retry waits
        assert "Temporary failure in MX lookup" in log
        deadline = time.monotonic() + 20
        while not (queued := w.queued()) or queued[0].retry < 1:
            assert time.monotonic() < deadline, "\n".join(w.loop_log)
            await asyncio.sleep(0.05)
        [envelope] = queued
        assert envelope.esc_class == 4 and envelope.esc_code == "4.4.3"
        assert w.mailbox("alice") == []


async def test_null_sender_and_notify_never_get_no_bounce(dns, world):
    base = net()
    server = dns(Zones().mx("remote.test", 10, "mx.remote.test").host("mx.remote.test", f"{base}.2"))
    w = await world(server.port)

    async def refuse(conn: Conn) -> None:
        await dialogue(conn, rcpt=lambda a: "550 5.1.1 No such user\r\n", keywords=("PIPELINING", "DSN"))

    async with Peer(refuse, host=f"{base}.2", port=25):
        await w.send(["x@remote.test"], rcpt_options=("NOTIFY=NEVER",))
        await w.send(["y@remote.test"], sender="")
        await w.wait_log("to=<y@remote.test>")
        await w.wait_log("to=<x@remote.test>")
        await w.wait_log("reason=notify-never")
        await w.wait_log("reason=null-sender")
    await asyncio.sleep(1.5)                       # past the bounce grouping delay
    assert w.mailbox("alice") == []
    await w.wait_empty()


async def test_a_session_ends_after_max_failures_in_a_row(dns, world):
    """`mta limit max-failures-per-session`: a peer refusing every recipient
    gets a new session (or route) after that many, not the whole queue."""
    base = net()
    server = dns(Zones().mx("remote.test", 10, "mx.remote.test").host("mx.remote.test", f"{base}.2"))
    w = await world(server.port, extra="mta limit max-failures-per-session 2 conn-delay-route 0"
                                       " reconn-delay-route 0\n")

    async def refuse(conn: Conn) -> None:
        await dialogue(conn, rcpt=lambda a: "450 4.2.1 Try again later\r\n")

    async with Peer(refuse, host=f"{base}.2", port=25) as mx:
        for i in range(4):
            await w.send([f"user{i}@remote.test"])
        await w.wait_log("result=TempFail", count=4)
        await w.wait_log("2 failures in a row on this session")
    assert len(mx.conns) >= 2
