"""`proc:`: a table helper program speaking OpenSMTPD 7.x's line protocol.

    table users proc:"/usr/local/libexec/table-ldap -f /etc/table-ldap.conf"

CONFIG is the helper's command line, split like a shell would split words
(`shlex`) but run directly, never through a shell.  The protocol is
OpenSMTPD's (smtpd-tables(7), protocol `0.1`), so a helper written for
current OpenSMTPD works unchanged (docs/tables.md, proc):

    > config|smtpd-version|VERSION    > config|protocol|0.1
    > config|tablename|NAME           > config|ready
    < register|alias   (one line per service)   < register|ready
    > table|0.1|<unix.usec>|NAME|lookup|alias|<id>|<key>
    < lookup-result|<id>|found|<value>   | not-found   | error|<message>
    > table|0.1|<unix.usec>|NAME|check|netaddr|<id>|<key>    < check-result|...
    > table|0.1|<unix.usec>|NAME|fetch|source|<id>           < fetch-result|...
    > table|0.1|<unix.usec>|NAME|update|<id>                 < update-result|<id>|ok

`<id>` is 8 hex digits; many requests may be in flight, answered in any
order.  A key holding CR, LF or NUL is never sent (it would end the line):
it finds nothing.  `|` in a key is fine, the key being the last field.

Failures are temporary for the mail and the helper is replaced:

* the helper exits, or writes a line that is not a reply to a pending
  request (garbled, unknown id, longer than `MAX_LINE`): every pending
  request fails (BackendError) and the helper is killed;
* a request unanswered after `QUERY_TIMEOUT`: the helper is taken for
  stalled, that request fails and the helper is killed;
* the next request starts a new helper, unless the previous one died less
  than the backoff ago (0.1 s, doubling up to `MAX_BACKOFF` while helpers
  keep failing): then it fails at once rather than fork in a loop.

`update table` sends `update` and waits for `update-result`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shlex
import time
from collections.abc import Sequence
from typing import ClassVar, Final

from postillion.table.backend import OneKeyAtATime, Shape
from postillion.table.errors import BackendError, printable
from postillion.table.services import Service

PROTOCOL_VERSION: Final = "0.1"
SMTPD_VERSION: Final = "7.6.0"      # what we tell helpers we are compatible with
MAX_LINE: Final = 65_536            # octets in one reply line
MAX_REGISTER: Final = 64            # register lines in a handshake
MAX_PENDING: Final = 1024           # requests in flight per helper
HANDSHAKE_TIMEOUT: Final = 10.0     # seconds for the helper to say register|ready
QUERY_TIMEOUT: Final = 8.0          # seconds for one reply; below the table timeout
STOP_TIMEOUT: Final = 2.0           # seconds for a closed helper to exit before SIGKILL
FIRST_BACKOFF: Final = 0.1          # seconds before restarting a helper that died
MAX_BACKOFF: Final = 30.0

#: The (uid, gid) a helper runs as when the process starting it is root.
#: The daemon's processes open their tables as root, before they drop to
#: the queue user, and a helper must never keep root for their lifetime:
#: the daemon sets this to the queue user first (run_helpers_as).  None:
#: a helper runs as whoever starts it (`postillion table lookup` as root).
_helper_user: tuple[int, int] | None = None


def run_helpers_as(user: tuple[int, int] | None) -> tuple[int, int] | None:
    """Every helper started from now on by a root process runs as
    `user` (uid, gid; no supplementary groups), or as root again with None.
    Returns the previous setting, for a caller that puts it back."""
    global _helper_user
    previous, _helper_user = _helper_user, user
    return previous

_SERVICES_BY_NAME: Final = {s.value: s for s in Service}

log = logging.getLogger("postillion.table")


class _Helper:
    """One running helper process and its pending requests."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pending: dict[str, tuple[str, asyncio.Future[str]]] = {}
        self.services: frozenset[Service] = frozenset()
        self.reader_task: asyncio.Task[None] | None = None
        self.dead = False
        self.died_at = 0.0

    def fail(self, reason: str) -> None:
        """Fail every pending request and kill the process."""
        if self.dead:
            return
        self.dead = True
        self.died_at = time.monotonic()
        pending, self.pending = self.pending, {}
        for _, future in pending.values():
            if not future.done():
                future.set_exception(BackendError(reason))
        if self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        if self.reader_task is not None and self.reader_task is not asyncio.current_task():
            self.reader_task.cancel()

    async def read_loop(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        try:
            while not self.dead:
                try:
                    raw = await stdout.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    self.fail("proc: helper exited")
                    return
                except asyncio.LimitOverrunError:
                    self.fail(f"proc: helper wrote a line longer than {MAX_LINE} octets")
                    return
                problem = self.dispatch(raw[:-1])
                if problem:
                    self.fail(f"proc: {problem}")
                    return
        except OSError as e:
            self.fail(f"proc: reading from the helper: {e}")

    def dispatch(self, raw: bytes) -> str | None:
        """Hand one reply line to its request; a problem description if it is bad."""
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            return "helper wrote a line that is not UTF-8"
        kind, _, rest = line.partition("|")
        ident, _, result = rest.partition("|")
        entry = self.pending.get(ident)
        if entry is None:
            return f"helper replied to no pending request: {printable(line, limit=80)}"
        op, future = entry
        accepted = {f"{op}-result"}
        if op == "fetch":
            accepted.add("lookup-result")   # as smtpd-tables(7)'s fetch example shows
        if kind not in accepted:
            return f"helper answered {printable(kind, limit=40)} to a {op}"
        del self.pending[ident]
        if not future.done():
            future.set_result(result)
        return None


class ProcBackend(OneKeyAtATime):
    name: ClassVar[str] = "proc"
    services: ClassVar[frozenset[Service]] = frozenset(Service)

    def __init__(self, config: str | None, *, items: Sequence[str] = (),
                 pairs: Sequence[tuple[str, str]] = (), is_map: bool = False) -> None:
        if not config or items or pairs:
            raise BackendError('a proc table needs a command: proc:"/path/helper --option"')
        try:
            self.argv = shlex.split(config)
        except ValueError as e:
            raise BackendError(f"proc: {config!r}: {e}") from None
        if not self.argv:
            raise BackendError('a proc table needs a command: proc:"/path/helper --option"')
        self.table_name = "proc"
        self._helper: _Helper | None = None
        self._starting: asyncio.Lock | None = None
        self._failures = 0
        self._died_at = 0.0
        self._closed = False
        self._stopping: set[asyncio.Task[None]] = set()

    def set_table_name(self, name: str) -> None:
        """The name sent in `config|tablename` and each request (set by `open_table`)."""
        self.table_name = name

    @property
    def shape(self) -> Shape:
        return Shape.QUERY

    def serves(self, service: Service) -> bool:
        if self._helper is None:
            return service in self.services
        return service in self._helper.services

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        self._closed = False
        self._helper = await self._start()

    async def close(self) -> None:
        self._closed = True
        helper, self._helper = self._helper, None
        if helper is not None:
            await _stop(helper)
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)

    async def update(self) -> None:
        result = await self._request("update", None, None)
        if result == "ok":
            return
        if result == "error" or result.startswith("error|"):
            raise BackendError(f"helper: {printable(result[6:], limit=200)}")
        raise BackendError(f"proc: malformed update-result {printable(result, limit=80)}")

    async def _start(self) -> _Helper:
        drop = None
        if _helper_user is not None and os.geteuid() == 0:
            # preexec_fn, not user=/group=: uvloop's subprocess_exec takes
            # only the former.  Three system calls, in the child before exec.
            uid, gid = _helper_user

            def drop() -> None:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                limit=MAX_LINE, start_new_session=True, preexec_fn=drop)
        except OSError as e:
            self._note_death()
            raise BackendError(f"proc: {self.argv[0]}: {e.strerror or e}") from None
        helper = _Helper(proc)
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                helper.services = await self._handshake(proc)
        except TimeoutError:
            helper.fail("handshake")
            self._note_death()
            await _stop(helper)
            raise BackendError(f"proc: {self.argv[0]}: no register|ready in"
                               f" {HANDSHAKE_TIMEOUT:g} s") from None
        except BackendError:
            helper.fail("handshake")
            self._note_death()
            await _stop(helper)
            raise
        helper.reader_task = asyncio.get_running_loop().create_task(helper.read_loop())
        return helper

    async def _handshake(self, proc: asyncio.subprocess.Process) -> frozenset[Service]:
        assert proc.stdin is not None and proc.stdout is not None
        hello = (f"config|smtpd-version|{SMTPD_VERSION}\n"
                 f"config|protocol|{PROTOCOL_VERSION}\n"
                 f"config|tablename|{self.table_name}\n"
                 "config|ready\n")
        where = f"proc: {self.argv[0]}"
        try:
            proc.stdin.write(hello.encode())
            await proc.stdin.drain()
            services: set[Service] = set()
            for _ in range(MAX_REGISTER + 1):
                raw = await proc.stdout.readuntil(b"\n")
                line = raw[:-1].decode("utf-8", "replace")
                if not line.startswith("register|"):
                    raise BackendError(f"{where}: bad handshake line {printable(line, limit=80)}")
                name = line[9:]
                if name == "ready":
                    if not services:
                        raise BackendError(f"{where}: the helper registered no service")
                    return frozenset(services)
                service = _SERVICES_BY_NAME.get(name)
                if service is None:
                    raise BackendError(f"{where}: unknown service {printable(name, limit=40)}")
                services.add(service)
        except asyncio.IncompleteReadError:
            raise BackendError(f"{where}: the helper exited during the handshake") from None
        except asyncio.LimitOverrunError:
            raise BackendError(f"{where}: handshake line too long") from None
        except OSError as e:
            raise BackendError(f"{where}: {e.strerror or e}") from None
        raise BackendError(f"{where}: more than {MAX_REGISTER} register lines")

    def _note_death(self) -> None:
        self._failures += 1
        self._died_at = time.monotonic()

    async def _running(self) -> _Helper:
        """The live helper, restarting a dead one unless it died very recently."""
        if self._closed:
            raise BackendError("table closed")
        helper = self._helper
        if helper is not None and not helper.dead:
            return helper
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            helper = self._helper
            if helper is not None and not helper.dead:
                return helper
            if helper is not None:
                self._helper = None
                self._failures += 1
                self._died_at = helper.died_at
                task = asyncio.get_running_loop().create_task(_stop(helper))
                self._stopping.add(task)
                task.add_done_callback(self._stopping.discard)
            backoff = min(FIRST_BACKOFF * 2 ** max(self._failures - 1, 0), MAX_BACKOFF)
            wait = self._died_at + backoff - time.monotonic()
            if wait > 0:
                raise BackendError(f"proc: helper restarting in {wait:.1f} s")
            self._helper = await self._start()
            log.info("proc: table %s: helper %s started", self.table_name, self.argv[0])
            return self._helper

    # ------------------------------------------------------------- requests

    async def _request(self, op: str, service: Service | None, key: str | None) -> str:
        helper = await self._running()
        if len(helper.pending) >= MAX_PENDING:
            raise BackendError(f"proc: {MAX_PENDING} requests already in flight")
        ident = secrets.token_hex(4)
        while ident in helper.pending:
            ident = secrets.token_hex(4)
        now = time.time()
        fields = ["table", PROTOCOL_VERSION, f"{int(now)}.{int(now * 1e6) % 1_000_000:06d}",
                  self.table_name, op]
        if service is not None:
            fields.append(service.value)
        fields.append(ident)
        if key is not None:
            fields.append(key)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        helper.pending[ident] = (op, future)
        stdin = helper.proc.stdin
        assert stdin is not None
        try:
            if helper.dead or stdin.is_closing():   # died since `_running` looked
                raise BackendError("proc: helper exited")
            stdin.write(("|".join(fields) + "\n").encode("utf-8"))
            async with asyncio.timeout(QUERY_TIMEOUT):
                await stdin.drain()
                result = await future
        except TimeoutError:
            helper.fail(f"proc: helper stalled ({op} unanswered after {QUERY_TIMEOUT:g} s)")
            raise BackendError(f"proc: helper stalled: no reply in {QUERY_TIMEOUT:g} s") from None
        except (OSError, RuntimeError) as e:    # broken pipe; a transport closed under us
            helper.fail(f"proc: writing to the helper: {e}")
            raise BackendError(f"proc: writing to the helper: {e}") from None
        finally:
            helper.pending.pop(ident, None)
        self._failures = 0
        return result

    async def _query(self, op: str, service: Service, key: str | None) -> str | None:
        result = await self._request(op, service, key)
        if result == "not-found":
            return None
        if result == "error" or result.startswith("error|"):
            raise BackendError(f"helper: {printable(result[6:], limit=200)}")
        if op == "check" and (result == "found" or result.startswith("found|")):
            return ""
        if result.startswith("found|") and len(result) > 6:
            return result[6:]
        raise BackendError(f"proc: malformed {op}-result")

    async def lookup(self, service: Service, key: str) -> str | None:
        if any(c in key for c in "\r\n\x00") or not _encodable(key):
            return None
        return await self._query("lookup", service, key)

    async def check(self, service: Service, key: str) -> bool:
        if any(c in key for c in "\r\n\x00") or not _encodable(key):
            return False
        return await self._query("check", service, key) is not None

    async def fetch(self, service: Service) -> str | None:
        return await self._query("fetch", service, None)


def _encodable(key: str) -> bool:
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def _stop(helper: _Helper) -> None:
    """Close the helper's stdin, give it `STOP_TIMEOUT` to exit, then kill it."""
    proc = helper.proc
    helper.dead = True
    if helper.reader_task is not None:
        helper.reader_task.cancel()
    for _, future in helper.pending.values():
        if not future.done():
            future.set_exception(BackendError("table closed"))
    helper.pending.clear()
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
    except TimeoutError:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        await proc.wait()
