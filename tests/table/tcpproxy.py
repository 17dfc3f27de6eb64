"""A TCP proxy the tests control, between a backend and its real server.

`await proxy.fail(mode)` makes the link fail one way, `await proxy.restore()`
heals it (on the same port):

* cut: open connections are closed (FIN), new ones closed at once;
* stall: bytes stop flowing both ways; connections stay open, new ones too;
* reset: open connections are reset (RST), new ones too;
* refuse: the listener is closed, so connects are refused.
"""

from __future__ import annotations

import asyncio
import socket
import struct


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode = "pass"
        self.port = 0
        self.server: asyncio.base_events.Server | None = None
        self.links: set[tuple[asyncio.StreamWriter, ...]] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def fail(self, mode: str) -> None:
        assert mode in ("cut", "stall", "reset", "refuse")
        self.mode = mode
        if mode == "refuse":
            assert self.server is not None
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        if mode in ("cut", "refuse"):
            self._close_all(reset=False)
        elif mode == "reset":
            self._close_all(reset=True)

    async def restore(self) -> None:
        if self.mode == "stall":
            self._close_all(reset=False)
        self.mode = "pass"
        if self.server is None:
            await self.start()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        self._close_all(reset=False)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def _close_all(self, reset: bool) -> None:
        for link in list(self.links):
            for writer in link:
                _close(writer, reset)
        self.links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode in ("cut", "reset"):
            _close(writer, reset=self.mode == "reset")
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _close(writer, reset=True)
            return
        link = (writer, up_writer)
        self.links.add(link)
        pumps = [asyncio.ensure_future(self._pump(reader, up_writer)),
                 asyncio.ensure_future(self._pump(up_reader, writer))]
        for task in pumps:
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for w in link:
            _close(w, reset=False)
        self.links.discard(link)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                if self.mode == "stall":
                    continue          # swallowed: the peer waits for ever
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return


def _close(writer: asyncio.StreamWriter, reset: bool) -> None:
    if reset:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        writer.transport.abort()
    else:
        writer.close()
