"""A small socketmap server for the tests: Postfix's netstring framing, honestly.

`SocketmapServer(data)` answers `NAME KEY` requests from `data[NAME][KEY]`
with `OK value` or `NOTFOUND `, reading requests as strictly as Postfix's
netstring code does (digits, `:`, exactly that many octets, `,`); a
malformed request closes the connection.  `mode` makes it misbehave for the
failure tests: every reply it sends is then wrong in one way.
"""

from __future__ import annotations

import asyncio

MODES = {
    "": None,
    "nocomma": lambda p: b"%d:%s;" % (len(p), p),
    "shortlen": lambda p: b"%d:%s," % (len(p) - 1, p),
    "longlen": lambda p: b"%d:%s," % (len(p) + 5, p),
    "nonDigit": lambda p: b"1x:%s," % p,
    "hugelen": lambda p: b"9999999:" + p,
    "leadingspace": lambda p: b" %d:%s," % (len(p), p),
    "badstatus": lambda p: b"5:MAYBE,",
    "temp": lambda p: b"19:TEMP try again soon,",
    "timeout": lambda p: b"7:TIMEOUT,",
    "perm": lambda p: b"12:PERM no map!,",
    "okempty": lambda p: b"3:OK ,",
    "close": lambda p: b"",
    "halfclose": lambda p: b"%d:%s" % (len(p), p[:2]),
}


class SocketmapServer:
    def __init__(self, data: dict[str, dict[str, str]], mode: str = "") -> None:
        self.data = data
        self.mode = mode
        self.requests: list[bytes] = []
        self.server: asyncio.base_events.Server | None = None
        self.stall = False
        self.writers: set[asyncio.StreamWriter] = set()

    async def start_tcp(self, host: str = "127.0.0.1") -> int:
        self.server = await asyncio.start_server(self._serve, host, 0)
        return self.server.sockets[0].getsockname()[1]

    async def start_unix(self, path: str) -> None:
        self.server = await asyncio.start_unix_server(self._serve, path)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self.writers):
                writer.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                self.requests.append(request)
                if self.stall:
                    await asyncio.sleep(3600)
                reply = self._answer(request)
                bad = MODES[self.mode]
                framed = bad(reply) if bad else b"%d:%s," % (len(reply), reply)
                if not framed:
                    return
                writer.write(framed)
                await writer.drain()
                if self.mode == "halfclose":
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self.writers.discard(writer)
            writer.close()

    def _answer(self, request: bytes) -> bytes:
        name, _, key = request.decode("utf-8").partition(" ")
        value = self.data.get(name, {}).get(key)
        if value is None:
            return b"NOTFOUND "
        return b"OK " + value.encode("utf-8")


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    digits = b""
    while True:
        c = await reader.read(1)
        if not c:
            return None
        if c == b":":
            break
        if not c.isdigit() or len(digits) >= 5:
            return None
        digits += c
    if not digits:
        return None
    try:
        data = await reader.readexactly(int(digits) + 1)
    except asyncio.IncompleteReadError:
        return None
    if data[-1:] != b",":
        return None
    return data[:-1]
