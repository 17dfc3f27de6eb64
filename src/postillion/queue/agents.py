"""The one door to the delivery agents: an envelope's `type` picks its agent.

The scheduler calls `Agents.deliver(envelope)` and knows nothing else: local
delivery (`mda`) and relaying (`mta`) each implement `Agent`, and the daemon
registers them, so neither the scheduler nor the session ever names a
concrete agent, and a new method is a new registration, not a new branch.
Being the one door, it is where every attempt's result is counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from postillion import metrics
from postillion.errors import PermFail, Reply, TempFail
from postillion.queue.envelope import Envelope


class Agent(Protocol):
    """Delivers one envelope: returns on success, raises TempFail or PermFail."""

    async def __call__(self, envelope: Envelope) -> None: ...


class Agents:
    """Envelope type -> agent."""

    def __init__(self, agents: Mapping[str, Agent]) -> None:
        self._agents = dict(agents)

    def register(self, kind: str, agent: Agent) -> None:
        self._agents[kind] = agent

    async def deliver(self, envelope: Envelope) -> None:
        agent = self._agents.get(envelope.type)
        try:
            if agent is None:
                # A queue written by a newer or differently built daemon: keep it.
                raise TempFail(Reply(451, "4.3.0", "No agent for this envelope"),
                               f"no {envelope.type} agent in this daemon")
            await agent(envelope)
        except PermFail:
            self._count(envelope, "permfail")
            raise
        except Exception:    # TempFail, and what the scheduler takes for one
            self._count(envelope, "tempfail")
            raise
        self._count(envelope, "ok")

    @staticmethod
    def _count(envelope: Envelope, result: str) -> None:
        """One attempt in postillion_deliveries_total (docs/metrics.md):
        the only count of an attempt, `show stats`'s scheduler.delivery.*
        and mta.relay.* included (postillion/stats.py)."""
        metrics.DELIVERIES.labels(envelope.type, result).inc()
