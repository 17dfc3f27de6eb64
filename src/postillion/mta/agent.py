"""The mta agent: relays one envelope at a time for the scheduler.

Placeholder until the MTA lands: the daemon refuses `action ... relay` at
start (config/support.py), so nothing reaches it; should an mta envelope
be found in a queue anyway, it stays queued.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import BinaryIO

from postillion.config.model import Config
from postillion.errors import Reply, TempFail
from postillion.queue.envelope import Envelope
from postillion.table.table import Table


def relay_tables(config: Config) -> set[str]:
    """The tables the relay actions use: what the mta process opens."""
    names: set[str] = set()
    for action in config.actions.values():
        if action.method != "relay":
            continue
        for name in (action.auth, action.src, action.helo_src, action.host_table, action.domain):
            if name is not None:
                names.add(name)
    return names


class MtaAgent:
    def __init__(self, config: Config, tables: Mapping[str, Table]) -> None:
        self.config = config
        self.tables = tables

    async def relay(self, envelope: Envelope, message: BinaryIO) -> None:
        raise TempFail(Reply(451, "4.3.0", "Relaying is not available"), "no MTA yet")

    async def stop(self) -> None:
        """End the sessions still open (the tables are the caller's)."""
