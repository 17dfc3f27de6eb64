"""The mta agent's own bookkeeping (its relaying is tests/e2e/test_relay*.py's).

A real DNS server on loopback answers (tests/dnsserver.py, standard zones):
domains that accept no mail fail at once, so relays come and go without a
session; the agent's clock is moved by hand.
"""

from __future__ import annotations

import io

import pytest

from postillion.config import parse
from postillion.errors import PermFail
from postillion.mta.agent import CONNECTOR_IDLE, CONNECTOR_PRUNE_EVERY, MtaAgent
from postillion.queue.envelope import Envelope, new_evpid, new_msgid

CONFIG = """\
mta nameserver 127.0.0.1 port {port}
action "out" relay
match from local for any action "out"
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def envelope(rcpt: str) -> Envelope:
    msgid = new_msgid()
    return Envelope(id=new_evpid(msgid), msgid=msgid, dispatcher="out", rcpt=rcpt, dest=rcpt,
                    type="mta", sender="alice@example.org")


async def fail(agent: MtaAgent, rcpt: str) -> None:
    with pytest.raises(PermFail):
        await agent.relay(envelope(rcpt), io.BytesIO(b"Subject: x\r\n\r\nx\r\n"))


async def test_idle_connectors_are_dropped_and_busy_relays_kept(dns_server):
    """Memory follows the relays in use: a relay nothing was sent to for
    CONNECTOR_IDLE seconds loses its connector; one in use keeps it."""
    clock = Clock()
    agent = MtaAgent(parse(CONFIG.format(port=dns_server.port), "smtpd.conf"), {}, clock=clock)
    for domain in ("nullmx.test", "localhost-mx.test", "nx.test"):
        await fail(agent, f"someone@{domain}")
    assert {r.domain for r in agent.connectors} == {"nullmx.test", "localhost-mx.test", "nx.test"}

    clock.now += CONNECTOR_IDLE / 2
    await fail(agent, "again@nullmx.test")                 # used again: kept
    assert len(agent.connectors) == 3                      # nothing is old enough yet
    clock.now += CONNECTOR_IDLE / 2 + CONNECTOR_PRUNE_EVERY
    await fail(agent, "other@nx2.test")
    assert {r.domain for r in agent.connectors} == {"nullmx.test", "nx2.test"}
    await agent.stop()
