"""The agents' one door: an envelope's type picks its agent; an unknown type
is a temporary failure (the envelope stays queued), never a crash."""

from __future__ import annotations

import pytest

from postillion.errors import TempFail
from postillion.queue.agents import Agents
from postillion.queue.envelope import Envelope, new_msgid


def envelope(kind: str) -> Envelope:
    return Envelope.new(new_msgid(), dispatcher="d", rcpt="a@b", dest="a@b", type=kind)


async def test_type_picks_the_agent():
    seen = []

    async def mda(env):
        seen.append(("mda", env.type))

    async def mta(env):
        seen.append(("mta", env.type))

    agents = Agents({"mda": mda})
    agents.register("mta", mta)
    await agents.deliver(envelope("mta"))
    await agents.deliver(envelope("mda"))
    assert seen == [("mta", "mta"), ("mda", "mda")]


async def test_no_agent_is_a_temporary_failure():
    with pytest.raises(TempFail) as e:
        await Agents({}).deliver(envelope("mta"))
    assert e.value.reply.code == 451 and "no mta agent" in e.value.reason
