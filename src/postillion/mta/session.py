"""One SMTP or LMTP client session on one route: the asyncio driver of
`mta/protocol.py` (docs/architecture.md, The MTA: the SMTP client).

`open_session(config)` connects (from `source` when given), reads the
greeting, says EHLO (HELO only when EHLO is refused and neither TLS nor
AUTH is needed), starts TLS as the relay's scheme asks, says EHLO again,
authenticates when given credentials, and returns a `ClientSession`; any
failure there raises `RouteError`, a temporary failure that names its
phase (connect, greeting, hello, tls, auth): it counts against the route,
not against the messages.  `session.send(transaction, message_file)` then
relays one message and returns a `TransactionResult` -- never raises for
anything the peer does: a broken connection, a timeout or a protocol error
fails every recipient without a final answer temporarily, and ends the
session.  Several messages may follow each other on one session (the
caller counts them against `session-mail-max`); `close()` says QUIT.

TLS per scheme (docs/configuration.md, Relay URLs):

========== ===============================================================
smtp        STARTTLS if offered, certificate not checked (opportunistic, as
            OpenSMTPD); a failed handshake reconnects once without TLS, as
            OpenSMTPD does (any certificate passes; this is about peers
            whose TLS does not work at all)
smtp+tls    STARTTLS required, certificate verified
smtp+notls  never TLS
smtps       TLS on connect (port 465), certificate verified
ssl         the 2012 `ssl://`: STARTTLS required on 25, else TLS on
            connect on 465, never plain; with a port, STARTTLS on it
lmtp        LHLO, no TLS; the port is required, or a Unix socket
            (`socket_path`, the `lmtp /path` delivery method)
========== ===============================================================

Certificates are verified against the system's CA bundle, or the given
`ca_file` or `tls_context`, for the name `server_name` (the relay's or the
MX's name; else `host`, an address, is checked as such).  Credentials are
never sent without TLS.  Bytes that came with the STARTTLS `220` are never
read as if they came through TLS: they end the session (OpenSMTPD 6.8 had
that bug).

Every wait is bounded by `ClientLimits`: connect 30 s, handshake 30 s,
each reply 300 s (the whole reply, however many lines), after the final
dot 600 s, each written block 300 s; received bytes wait in a buffer of
`read_buffer` octets before reading pauses, and replies are parsed under
the reply bounds, so a hostile peer costs bounded memory and time.
"""

from __future__ import annotations

import asyncio
import enum
import os
import ssl
from collections import deque
from dataclasses import dataclass, replace
from typing import BinaryIO, Self

from postillion.config.model import RelayHost
from postillion.errors import Reply, TempFail
from postillion.mta._events import (
    DEFAULT_LIMITS,
    NEED_DATA,
    ClientLimits,
    Command,
    Event,
    PeerProtocolError,
    PeerTimeout,
    Replied,
    SendBody,
    Transaction,
    TransactionDone,
    TransactionResult,
)
from postillion.mta._stream import (
    Stream,
    is_address,
    opportunistic_context,
    system_context,
)
from postillion.mta.protocol import ClientProtocol, UsageError
from postillion.table.values import Credentials
from postillion.tls import describe

#: Relay URL schemes the client speaks, as `RelayHost.scheme` holds them.
SCHEMES = frozenset({"smtp", "smtp+tls", "smtp+notls", "smtps", "ssl", "lmtp"})


class TlsMode(enum.Enum):
    """How one connection attempt uses TLS."""

    PLAIN = "plain"                    # never
    OPPORTUNISTIC = "opportunistic"    # STARTTLS if offered, not verified
    STARTTLS = "starttls"              # STARTTLS required, verified
    ON_CONNECT = "on-connect"          # TLS before the greeting, verified


class Phase(enum.Enum):
    """Where opening a session failed; all of them count against the route."""

    CONNECT = "connect"
    GREETING = "greeting"
    HELLO = "hello"
    TLS = "tls"
    AUTH = "auth"


_PHASE_CODES = {Phase.CONNECT: "4.4.1", Phase.GREETING: "4.4.0", Phase.HELLO: "4.4.0",
                Phase.TLS: "4.7.5", Phase.AUTH: "4.7.8"}


def _clean(text: str) -> str:
    return " ".join(text.split())


class RouteError(TempFail):
    """A session could not be opened on this route: a temporary failure of
    the messages it was for, and an error of the route (OpenSMTPD counts
    refused connects, failed required TLS, a refused greeting or EHLO).

    `phase` says where; `peer_reply` is the peer's refusal when there was
    one; `reason` (also the reply's text) says why, for the log and the
    envelope's error line.  `handshake` marks a failed TLS handshake, after
    which opportunistic TLS tries again without it.
    """

    def __init__(self, phase: Phase, reason: str, peer_reply: Reply | None = None,
                 handshake: bool = False) -> None:
        reason = _clean(reason)
        super().__init__(Reply(451, _PHASE_CODES[phase], reason), reason)
        self.phase = phase
        self.peer_reply = peer_reply
        self.handshake = handshake


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Everything one session needs to know about its route.

    `host` is the address to connect to (a name works too, resolved by the
    system); `port` None means the scheme's default.  `server_name` is the
    name a verified certificate must carry (default: `host`).  `source` is
    the local address to bind (`src`); `helo` the name we announce.
    `credentials` (user, cleartext secret) come from the relay label's
    lookup.  `tls_context` or `ca_file` replace the system's CA bundle for
    verification; `opportunistic_context` replaces the unverified one (both
    carry the relay's client certificate, `pki`, when it has one).  `socket_path` (LMTP only) connects to a Unix socket
    instead of `host` and `port`: an LMTP server on the same machine, as
    Dovecot's `lmtp` socket.
    """

    host: str
    scheme: str = "smtp"
    port: int | None = None
    server_name: str = ""
    helo: str = "localhost"
    source: str | None = None
    credentials: Credentials | None = None
    tls_context: ssl.SSLContext | None = None
    ca_file: str | None = None
    opportunistic_context: ssl.SSLContext | None = None
    limits: ClientLimits = DEFAULT_LIMITS
    socket_path: str = ""

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown relay scheme {self.scheme!r}")
        if self.socket_path:
            if self.scheme != "lmtp":
                raise ValueError("a Unix socket is for lmtp only")
            if not self.socket_path.startswith("/"):
                raise ValueError(f"not an absolute socket path: {self.socket_path!r}")
        elif self.scheme == "lmtp" and self.port is None:
            raise ValueError("lmtp needs a port")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ValueError(f"port out of range: {self.port}")

    @classmethod
    def for_relay(cls, relay: RelayHost, address: str | None = None, **fields: object) -> ClientConfig:
        """The config for a `relay host` URL, connecting to `address` (one
        of the relay host's addresses) or to the URL's host itself."""
        host = relay.host
        literal = host.startswith("[")
        if literal:
            host = host[1:-1]
            if host[:5].lower() == "ipv6:":
                host = host[5:]
        fields.setdefault("server_name", "" if literal else host)
        return cls(host=address or host, scheme=relay.scheme, port=relay.port,
                   **fields)  # type: ignore[arg-type]


def _attempts(config: ClientConfig) -> list[tuple[TlsMode, int]]:
    """The connections to try in order, as (TLS mode, port)."""
    port = config.port
    match config.scheme:
        case "smtp":
            return [(TlsMode.OPPORTUNISTIC, port or 25)]
        case "smtp+tls":
            return [(TlsMode.STARTTLS, port or 25)]
        case "smtps":
            return [(TlsMode.ON_CONNECT, port or 465)]
        case "ssl":
            if port:
                return [(TlsMode.STARTTLS, port)]
            return [(TlsMode.STARTTLS, 25), (TlsMode.ON_CONNECT, 465)]
        case _:   # smtp+notls, lmtp
            return [(TlsMode.PLAIN, port or 25)]


class _MessageUnreadable(Exception):
    """The queue's message file could not be read: never send the dot."""


class ClientSession:
    """An open session; see the module docstring.  Made by `open_session`."""

    def __init__(self, config: ClientConfig, stream: Stream, mode: TlsMode, port: int) -> None:
        self.config = config
        self.limits = config.limits
        self.mode = mode
        self.port = port
        self.proto = ClientProtocol(lmtp=config.scheme == "lmtp", limits=config.limits)
        #: (`version:cipher:bits`, `YES|NO`) once TLS is up, as `postillion.tls.describe`.
        self.tls: tuple[str, str] | None = None
        self.messages = 0            # transactions begun on this session
        self._stream = stream
        self._closed = False

    # -- the wire -------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        if not data:
            return
        assert self._stream.transport is not None
        self._stream.transport.write(data)
        try:
            async with asyncio.timeout(self.limits.send_timeout):
                await self._stream.drain()
        except TimeoutError:
            raise PeerTimeout(f"peer did not take our data within {self.limits.send_timeout:g}s") from None

    async def _event(self) -> Event:
        """The next event, reading as needed: each reply gets its own
        deadline (the reply after the dot `data_end_timeout`, any other
        `reply_timeout`), however many lines it has."""
        proto = self.proto
        loop = asyncio.get_running_loop()
        progress = -1
        while True:
            event = proto.next_event()
            await self._write(proto.data_to_send())
            if event is not NEED_DATA:
                return event  # type: ignore[return-value]
            if proto.replies != progress:        # a reply came: the next one's clock starts
                progress = proto.replies
                command = proto.waiting_for
                timeout = (self.limits.data_end_timeout if command is Command.DOT
                           else self.limits.reply_timeout)
                deadline = loop.time() + timeout
            try:
                async with asyncio.timeout_at(deadline):
                    data = await self._stream.read()
            except TimeoutError:
                what = command.value if command else "?"
                raise PeerTimeout(f"timeout after {timeout:g}s waiting for the reply to {what}") from None
            if not data and self._stream.error is not None:
                raise PeerProtocolError(f"connection lost: {self._stream.error}")
            proto.receive_data(data)

    async def _reply(self) -> Reply:
        event = await self._event()
        assert isinstance(event, Replied), event
        return event.reply

    def _abort_connection(self) -> None:
        self._closed = True
        if self._stream.transport is not None:
            self._stream.transport.abort()

    @property
    def usable(self) -> bool:
        """True while another message may be sent on this session."""
        return not (self._closed or self._stream.lost or self.proto.closing
                    or self.proto.in_transaction)

    # -- opening --------------------------------------------------------------

    async def _establish(self) -> None:
        phase = Phase.TLS
        try:
            if self.mode is TlsMode.ON_CONNECT:
                await self._handshake(verified=True, starttls=False)
            phase = Phase.GREETING
            reply = await self._reply()
            if reply.code >= 400:
                raise RouteError(phase, f"Banner rejected: {reply}", reply)
            phase = Phase.HELLO
            await self._hello()
            if self.mode in (TlsMode.OPPORTUNISTIC, TlsMode.STARTTLS):
                phase = Phase.TLS
                if await self._starttls():
                    phase = Phase.HELLO
                    await self._hello(again=True)
            if self.config.credentials is not None:
                phase = Phase.AUTH
                await self._auth(self.config.credentials)
        except PeerProtocolError as e:
            raise RouteError(phase, e.reason) from None
        except OSError as e:
            raise RouteError(phase, f"Connection error: {e.strerror or e}") from None

    async def _hello(self, again: bool = False) -> None:
        """EHLO (LHLO); HELO when refused, unless TLS or AUTH are needed."""
        self.proto.hello(self.config.helo)
        reply = await self._reply()
        if reply.code < 400:
            return
        verb = "LHLO" if self.proto.lmtp else "EHLO"
        if (again or self.proto.lmtp or self.proto.closing or self.config.credentials is not None
                or self.mode in (TlsMode.STARTTLS, TlsMode.ON_CONNECT)):
            raise RouteError(Phase.HELLO, f"{verb} rejected: {reply}", reply)
        self.proto.helo(self.config.helo)
        reply = await self._reply()
        if reply.code >= 400:
            raise RouteError(Phase.HELLO, f"HELO rejected: {reply}", reply)

    async def _starttls(self) -> bool:
        """STARTTLS as the mode asks; True when TLS is now up."""
        required = self.mode is TlsMode.STARTTLS
        if not self.proto.extensions.starttls:
            if required:
                raise RouteError(Phase.TLS, "TLS required but not offered by destination")
            return False
        self.proto.starttls()
        reply = await self._reply()
        if reply.code >= 400:
            if required or self.proto.closing:
                raise RouteError(Phase.TLS, f"STARTTLS rejected: {reply}", reply)
            return False
        await self._handshake(verified=required, starttls=True)
        return True

    async def _handshake(self, verified: bool, starttls: bool) -> None:
        config = self.config
        name = config.server_name or config.host
        if verified:
            ctx = config.tls_context or system_context(config.ca_file)
            server_hostname: str | None = name
        else:
            ctx = config.opportunistic_context or opportunistic_context()
            server_hostname = None if is_address(name) else name
        loop = asyncio.get_running_loop()
        stream = self._stream
        assert stream.transport is not None
        try:
            async with asyncio.timeout(self.limits.tls_timeout):
                # Nothing may wait in a buffer: it came before TLS.  No await
                # lies between this check and start_tls pausing the socket.
                if stream.buffered or self.proto.buffered:
                    raise PeerProtocolError("data received before TLS, after the STARTTLS reply")
                transport = await loop.start_tls(
                    stream.transport, stream, ctx, server_hostname=server_hostname,
                    ssl_handshake_timeout=self.limits.tls_timeout)
        except ssl.SSLCertVerificationError as e:
            raise RouteError(Phase.TLS, f"Certificate verification failed: "
                                        f"{e.verify_message or e.reason or e}", handshake=True) from None
        except ssl.SSLError as e:
            raise RouteError(Phase.TLS, f"TLS handshake failed: {e.reason or e}",
                             handshake=True) from None
        except TimeoutError:
            raise RouteError(Phase.TLS, f"TLS handshake timed out after "
                                        f"{self.limits.tls_timeout:g}s", handshake=True) from None
        except (OSError, RuntimeError) as e:   # RuntimeError: the transport closed meanwhile
            raise RouteError(Phase.TLS, f"TLS handshake failed: {e}", handshake=True) from None
        if transport is None:
            raise RouteError(Phase.TLS, "TLS handshake failed: connection closed")
        stream.transport = transport  # type: ignore[assignment]
        if starttls:
            self.proto.tls_started()
        self.tls = describe(transport.get_extra_info("ssl_object"))

    async def _auth(self, credentials: Credentials) -> None:
        """AUTH PLAIN if offered, else LOGIN; never without TLS."""
        if self.tls is None:
            raise RouteError(Phase.AUTH, "AUTH not possible without TLS")
        offered = self.proto.extensions.auth
        if not offered:
            raise RouteError(Phase.AUTH, "AUTH not offered by destination")
        mechanism = next((m for m in ("PLAIN", "LOGIN") if m in offered), None)
        if mechanism is None:
            raise RouteError(Phase.AUTH, "No supported AUTH mechanism offered "
                                         f"({' '.join(sorted(offered))})")
        try:
            self.proto.auth(mechanism, credentials.username, credentials.secret)
        except ValueError as e:
            raise RouteError(Phase.AUTH, f"Unusable credentials: {e}") from None
        reply = await self._reply()
        if reply.code >= 400:
            raise RouteError(Phase.AUTH, f"AUTH rejected: {reply}", reply)

    # -- sending --------------------------------------------------------------

    async def send(self, transaction: Transaction, message: BinaryIO) -> TransactionResult:
        """Relay one message, read from `message` (from its current position
        to its end), to the transaction's recipients.

        Returns each recipient's outcome; never raises for what the peer or
        the network does.  Call only while `usable` (else UsageError).
        """
        if not self.usable:
            raise UsageError("session not usable")
        if transaction.size is None:
            transaction = replace(transaction, size=_remaining(message))
        self.messages += 1
        self.proto.begin(transaction)
        try:
            while True:
                event = await self._event()
                if isinstance(event, TransactionDone):
                    result = event.result
                    break
                if isinstance(event, SendBody):
                    await self._send_body(message)
        except PeerProtocolError as e:
            return self._broken(Reply(451, "4.4.2", _clean(e.reason)), e.reason)
        except _MessageUnreadable as e:
            return self._broken(Reply(451, "4.3.0", _clean(str(e))), str(e))
        except OSError as e:
            reason = f"Connection error: {e.strerror or e}"
            return self._broken(Reply(451, "4.4.2", _clean(reason)), reason)
        if self.proto.closing:
            self._abort_connection()
        return result

    def _broken(self, reply: Reply, reason: str) -> TransactionResult:
        result = self.proto.abort(reply, reason)
        self._abort_connection()
        return result

    async def _send_body(self, message: BinaryIO) -> None:
        """Stream the file in chunks read off the event loop (the disk may
        be slow); a read error closes the connection without the dot, so
        the peer drops what it got."""
        loop = asyncio.get_running_loop()
        size = self.limits.chunk_size
        while True:
            try:
                chunk = await loop.run_in_executor(None, message.read, size)
            except (OSError, ValueError) as e:
                raise _MessageUnreadable(f"Cannot read the message: {e}") from None
            if not chunk:
                break
            await self._write(self.proto.send_data(chunk))
        await self._write(self.proto.end_data())

    # -- closing --------------------------------------------------------------

    async def close(self) -> None:
        """QUIT (its reply waited for at most `quit_timeout`), then close."""
        if self._closed:
            return
        if self.usable:
            try:
                async with asyncio.timeout(self.limits.quit_timeout):
                    self.proto.quit()
                    await self._event()
            except (PeerProtocolError, OSError, UsageError):
                pass
        self._abort_connection()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _remaining(message: BinaryIO) -> int | None:
    """Octets from the current position to the end, if the file can seek."""
    try:
        here = message.tell()
        end = message.seek(0, 2)
        message.seek(here)
        return max(0, end - here)
    except (OSError, ValueError, AttributeError):
        return None


async def _connect(config: ClientConfig, mode: TlsMode, port: int) -> ClientSession:
    loop = asyncio.get_running_loop()
    stream = Stream(config.limits.read_buffer)
    local = (config.source, 0) if config.source else None
    timeout = config.limits.connect_timeout
    try:
        async with asyncio.timeout(timeout):
            if config.socket_path:
                await loop.create_unix_connection(lambda: stream, config.socket_path)
            else:
                await loop.create_connection(lambda: stream, config.host, port, local_addr=local)
    except TimeoutError:
        raise RouteError(Phase.CONNECT, f"Connection timed out after {timeout:g}s") from None
    except OSError as e:
        # asyncio's own text ("Connect call failed ('192.0.2.1', 25)") says
        # less than the errno's: "Connection refused".
        why = os.strerror(e.errno) if e.errno else str(e)
        raise RouteError(Phase.CONNECT, f"Connection failed: {why}") from None
    session = ClientSession(config, stream, mode, port)
    try:
        await session._establish()
    except BaseException:
        session._abort_connection()
        raise
    return session


async def open_session(config: ClientConfig) -> ClientSession:
    """Connect and get ready to send, as the module docstring says.

    Raises RouteError (temporary) when no attempt gets that far: the last
    attempt's error.
    """
    attempts = deque(_attempts(config))
    while True:
        mode, port = attempts.popleft()
        try:
            return await _connect(config, mode, port)
        except RouteError as e:
            if mode is TlsMode.OPPORTUNISTIC and e.handshake:
                attempts.appendleft((TlsMode.PLAIN, port))   # OpenSMTPD's downgrade
            elif not attempts or e.phase is Phase.AUTH:
                raise
