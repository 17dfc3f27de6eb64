"""The ctl verbs an smtp process carries out, passed on by the queue process
(control/remote.py): its counters, `pause|resume smtp`, `update table`, the
logging verbs.

`pause smtp` holds this process's listeners: a new client gets `421 4.3.2`
in place of the banner and is closed; sessions already open go on.  It
takes `listeners` (objects with `paused` and `sessions`, smtp/server.py's
Listener) and the process's `update_table(name) -> bool`: the daemon wires
them, this module imports nothing of the smtp package.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from postillion import stats
from postillion.control.remote import RemoteHandler, logging_handlers


class Pausable(Protocol):
    paused: bool
    sessions: set[Any]


def smtp_handlers(listeners: Sequence[Pausable],
                  update_table: Callable[[str], Awaitable[bool]]) -> dict[str, RemoteHandler]:
    async def show_stats(args: tuple[str, ...]) -> dict[str, int]:
        return stats.snapshot()

    async def pause(args: tuple[str, ...]) -> dict[str, Any]:
        for listener in listeners:
            listener.paused = True
        return {"paused": True, "listeners": len(listeners)}

    async def resume(args: tuple[str, ...]) -> dict[str, Any]:
        for listener in listeners:
            listener.paused = False
        return {"paused": False, "listeners": len(listeners)}

    async def update(args: tuple[str, ...]) -> dict[str, Any]:
        return {"updated": await update_table(args[0])}

    return {"show stats": show_stats, "pause smtp": pause, "resume smtp": resume,
            "update table": update, **logging_handlers()}
