"""A socketmap server for bench/tables, in a process of its own.

    python bench/socketmap_serve.py N

Serves `alias userNNN@example.org` -> `userNNN` for N entries with the
tests' strict netstring server (tests/table/socketmap_server.py) on a free
loopback port, prints the port on one line, and serves until stdin closes
(so it never outlives the bench).  It runs apart so that the server's work
is not in the event loop being measured.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.table.socketmap_server import SocketmapServer  # noqa: E402


async def serve(n: int) -> None:
    server = SocketmapServer({"alias": {f"user{i}@example.org": f"user{i}" for i in range(n)}})
    port = await server.start_tcp()
    print(port, flush=True)
    await asyncio.to_thread(sys.stdin.read)     # until the bench closes our stdin
    await server.close()


if __name__ == "__main__":
    try:
        import uvloop
        run = uvloop.run
    except ImportError:
        run = asyncio.run
    run(serve(int(sys.argv[1])))
