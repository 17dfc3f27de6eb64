"""The Prometheus endpoint: `metrics listen on ADDRESS port PORT` (docs/metrics.md).

Both ends of it, kept apart from the parent's and the roles' own code so
each side needs one call:

* **the parent** (root, parses no network input) binds the listening
  socket with the SMTP listeners (`bind`: the same kind of startup error),
  makes `<spool>/metrics/` afresh for the queue user (`prepare_dir`), puts
  it in each role's environment (`role_environ`), and forgets a role's
  live gauges when it reaps it (`process_gone`);
* **the queue process** answers HTTP on the socket it inherits
  (`MetricsServer`), summing the files every role wrote
  (prometheus_client's multiprocess mode, postillion/metrics.py).

Why the queue process: it runs for the daemon's whole life, holds what the
queue gauges describe, and is unprivileged -- the parent never reads a
byte from the network.  Why our own small responder rather than
prometheus_client's `start_http_server`: that one binds its own socket and
runs a threaded `http.server` with no bound on a request's size or on how
long a client may hold a thread; here the parent binds, the event loop
answers, and every request is bounded (MAX_REQUEST octets, REQUEST_TIMEOUT
seconds, MAX_CLIENTS at once).  It speaks just enough HTTP/1.0 and 1.1 for
a scraper: GET or HEAD of `/metrics`, one response, then the connection
closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import ipaddress
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from postillion import metrics
from postillion.config.model import MetricsDecl
from postillion.daemon import StartupError
from postillion.queue.scheduler import Scheduler

logger = logging.getLogger("postillion.metrics")

#: The spool subdirectory holding every process's metrics files.
DIR_NAME: Final = "metrics"
#: The one path served; any other is 404.
PATH: Final = "/metrics"
#: A request's head (request line and headers), octets: a scraper sends a
#: few hundred; more is refused with 400.
MAX_REQUEST: Final = 8192
#: Seconds a client has to send its request head, and to take the answer.
REQUEST_TIMEOUT: Final = 10.0
#: Connections answered at once; more are closed at once (a scraper
#: needs one).
MAX_CLIENTS: Final = 8
#: Listen backlog of the metrics socket.
BACKLOG: Final = 16
#: The text exposition format generate_latest writes.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

_REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found",
                   405: "Method Not Allowed", 408: "Request Timeout",
                   500: "Internal Server Error"}


# -- the parent's side ----------------------------------------------------------------

def bind(decl: MetricsDecl) -> socket.socket:
    """The listening socket of `metrics listen on`; a StartupError naming
    the statement when it cannot be bound (as for `listen on`)."""
    family = socket.AF_INET6 if ipaddress.ip_address(decl.address).version == 6 \
        else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((decl.address, decl.port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise StartupError(f"{decl.pos}: cannot listen on {decl.address} port {decl.port}"
                           f" for metrics: {reason}") from None
    logger.info("metrics on http://%s:%d%s", f"[{decl.address}]" if family ==
                socket.AF_INET6 else decl.address, decl.port, PATH)
    return sock


def prepare_dir(spool: Path, uid: int, gid: int) -> Path:
    """`<spool>/metrics/`, emptied (the counts of a previous run are not
    this one's), 0700 and the queue user's: the roles write there."""
    path = spool / DIR_NAME
    if path.is_symlink() or path.is_file():
        path.unlink()
    shutil.rmtree(path, ignore_errors=True)
    try:
        path.mkdir(mode=0o700)
        os.chown(path, uid, gid)
    except OSError as e:
        raise StartupError(f"metrics {path}: {e.strerror or e}") from None
    return path


def role_environ(directory: Path | None) -> dict[str, str]:
    """The environment of a role: ours, with the metrics directory when
    there is one (postillion/metrics.py reads it at import)."""
    env = dict(os.environ)
    env.pop(metrics.DIR_ENV, None)
    if directory is not None:
        env[metrics.DIR_ENV] = str(directory)
    return env


def process_gone(directory: Path | None, pid: int) -> None:
    """A role died: its live gauges (sessions open, queue size) go with it;
    its counters and histograms stay in the sums, as counters must."""
    if directory is not None:
        try:
            mark_process_dead(pid, str(directory))
        except OSError as e:
            logger.warning("metrics: cannot drop the gauges of pid %d: %s", pid, e)


# -- the roles' side ------------------------------------------------------------------

def hand_over_files(uid: int, gid: int) -> None:
    """Give this process's metrics files to the queue user before dropping
    to it: those made at import ran as root, and the queue process, which
    reads them all, must be able to read them whatever the umask was."""
    directory = os.environ.get(metrics.DIR_ENV)
    if not directory:
        return
    for path in glob.glob(os.path.join(glob.escape(directory), f"*_{os.getpid()}.db")):
        with contextlib.suppress(FileNotFoundError):
            os.chown(path, uid, gid)


def queue_census(scheduler: Scheduler | None) -> None:
    """Set the queue gauges from the queue process's scheduler."""
    count, oldest = scheduler.census() if scheduler is not None else (0, None)
    metrics.QUEUE_ENVELOPES.set(count)
    metrics.QUEUE_OLDEST_AGE.set(max(0.0, time.time() - oldest) if oldest is not None else 0.0)


class BadRequest(Exception):
    """A request head that is not one we answer: 400, and the connection closes."""


class MetricsServer:
    """The queue process's HTTP responder on the socket the parent bound.

    `census` runs in the event loop before each rendering (the queue
    gauges); the sum over every process's files is read in a thread, so a
    scrape never stalls the scheduler."""

    def __init__(self, census: Callable[[], None]) -> None:
        self.census = census
        self.clients = 0
        self._server: asyncio.Server | None = None
        directory = os.environ.get(metrics.DIR_ENV)
        self.registry = CollectorRegistry()
        if directory:
            MultiProcessCollector(self.registry, path=directory)

    async def start(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(self._client, sock=sock, limit=MAX_REQUEST)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()
            self._server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.clients >= MAX_CLIENTS:
            writer.close()
            return
        self.clients += 1
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    method, path = await read_request(reader)
                status, body, head = await self._answer(method, path)
            except BadRequest as e:
                status, body, head = 400, f"Bad request: {e}\n".encode(), False
            except TimeoutError:
                status, body, head = 408, b"Request timeout\n", False
            headers = [f"Content-Type: {CONTENT_TYPE if status == 200 else 'text/plain'}",
                       f"Content-Length: {len(body)}", "Connection: close"]
            if status == 405:
                headers.append("Allow: GET, HEAD")
            lines = [f"HTTP/1.1 {status} {_REASONS[status]}", *headers, "", ""]
            writer.write("\r\n".join(lines).encode("ascii"))
            if not head:
                writer.write(body)
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await writer.drain()
        except (ConnectionError, TimeoutError, OSError):
            pass
        finally:
            self.clients -= 1
            writer.close()

    async def _answer(self, method: str, path: str) -> tuple[int, bytes, bool]:
        """(status, body, HEAD?) for a well-formed request."""
        if method not in ("GET", "HEAD"):
            return 405, b"Only GET and HEAD\n", False
        if path != PATH:
            return 404, f"Not found; the metrics are at {PATH}\n".encode(), method == "HEAD"
        try:
            self.census()
            body = await asyncio.to_thread(generate_latest, self.registry)
        except Exception:
            logger.exception("metrics: cannot render")
            return 500, b"Cannot render the metrics; see the log\n", method == "HEAD"
        return 200, body, method == "HEAD"


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    """The method and the path (query removed) of one request head, read
    to its empty line; BadRequest when it is malformed or longer than
    MAX_REQUEST octets.  A body is never read: GET and HEAD have none."""
    lines: list[bytes] = []
    size = 0
    while True:
        try:
            line = await reader.readline()
        except ValueError:              # a line longer than the reader's limit
            raise BadRequest("request too long") from None
        size += len(line)
        if size > MAX_REQUEST:
            raise BadRequest("request too long")
        if not line.endswith(b"\n"):
            raise BadRequest("connection closed before the end of the request")
        if line in (b"\r\n", b"\n"):
            if lines:
                break
            continue        # RFC 9112 2.2: an empty line before the request line is ignored
        lines.append(line)
    try:
        request = lines[0].decode("ascii").rstrip("\r\n")
    except UnicodeDecodeError:
        raise BadRequest("request line is not ASCII") from None
    parts = request.split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[0].isupper() \
            or not parts[1].startswith("/") or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        raise BadRequest("malformed request line")
    return parts[0], parts[1].split("?", 1)[0]
