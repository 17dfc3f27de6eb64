"""A TCP proxy the tests control, between a client and a real server.

It forwards bytes both ways until told to misbehave:

* `cut()`    closes every proxied connection cleanly (FIN both ways), and
             every new one as soon as it is accepted;
* `reset()`  aborts them, old and new, with an RST (SO_LINGER 0);
* `stall()`  keeps every connection, old and new, open but forwards nothing;
* `refuse()` closes them and stops listening: connecting is refused;
* `restore()` forwards again (listening again on the same port).

`active` counts the client connections it holds, so a test can see that
nothing is left stuck after an outage.  Loopback only; bounded reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

CHUNK = 65536


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = 0
        self.stalled = False
        self.fault = ""         # "cut" or "reset": done to every new connection too
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> int:
        return len(self._pairs)

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, self.host, self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        if self.fault:
            self._kill(writer, None)
            self._tasks.discard(task)
            return
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter | None] = (writer, None)
        self._pairs.add(pair)
        try:
            while self.stalled:             # a stalled server: accepted, never answering
                if reader.at_eof() or writer.is_closing():
                    return
                await asyncio.sleep(0.02)
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            self._pairs.discard(pair)
            pair = (writer, up_writer)
            self._pairs.add(pair)
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer),
                                 return_exceptions=True)
        finally:
            self._pairs.discard(pair)
            for w in pair:
                if w is not None:
                    w.close()
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                while self.stalled and not writer.is_closing():
                    await asyncio.sleep(0.02)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def _kill(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter | None) -> None:
        if self.fault == "reset":
            sock = client.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.transport.abort()
            if upstream is not None:
                upstream.transport.abort()
        else:
            client.close()
            if upstream is not None:
                upstream.close()

    def cut(self) -> None:
        self.fault = "cut"
        for client, upstream in list(self._pairs):
            self._kill(client, upstream)

    def reset(self) -> None:
        self.fault = "reset"
        for client, upstream in list(self._pairs):
            self._kill(client, upstream)

    def stall(self) -> None:
        self.stalled = True

    async def refuse(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self.cut()
        self.fault = ""
        if server is not None:
            async with asyncio.timeout(5):
                await server.wait_closed()

    async def restore(self) -> None:
        self.stalled = False
        self.fault = ""
        if self._server is None:
            await self.start()

    async def wait_idle(self, at_most: int = 0, timeout: float = 5.0) -> int:
        """Wait until at most `at_most` connections are held; the count then."""
        async with asyncio.timeout(timeout):
            while self.active > at_most:
                await asyncio.sleep(0.02)
        return self.active

    async def close(self) -> None:
        await self.refuse()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
