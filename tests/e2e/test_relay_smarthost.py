"""Mail leaves the host, the harder ways: through a smarthost that wants
STARTTLS and AUTH, from several source addresses, past hostile next hops,
and until its envelopes expire.

The sending daemon runs in the test's event loop (tests/e2e/relayworld.py);
the smarthost is the real daemon in-process on its own loop and thread
(tests/e2e/inproc.py: STARTTLS-required submission with AUTH against
SQLite, certificates from a trustme CA), and MX hosts are scripted peers on
port 25 of the test's own loopback addresses (tests/mta/peers.py).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
import time

import pytest
import trustme

from postillion.mta._events import ClientLimits
from postillion.table.backends.file import FileBackend
from tests.dnsserver import Zones
from tests.e2e.inproc import PASSWORD, USER, secure_uvloop  # noqa: F401  (fixture)
from tests.e2e.relayworld import SENDER, dns, net, receiver, until, world  # noqa: F401  (fixtures)
from tests.mta.peers import READ_TIMEOUT, Conn, Peer, dialogue, ehlo_reply

#: No waiting between sessions: the route and relay delays are OpenSMTPD's
#: politeness towards real hosts, and would make these tests wait seconds.
NO_DELAYS = "mta limit conn-delay-route 0 reconn-delay-route 0 conn-delay-relay 0"

def starttls_peer(ctx: ssl.SSLContext):
    """A server that offers STARTTLS, starts TLS with `ctx`, then takes mail."""
    async def handler(conn: Conn) -> None:
        await conn.send("220 v6.example.test ESMTP\r\n")
        await conn.line()
        await conn.send(ehlo_reply(("STARTTLS", "PIPELINING")))
        if (await conn.line()).upper() != "STARTTLS":
            return
        await conn.send("220 2.0.0 Ready to start TLS\r\n")
        await conn.start_tls(ctx)
        await dialogue(conn, greet=False)
    return handler


@pytest.mark.parametrize("trust", ["ca", "system"])
async def test_smarthost_given_as_an_ipv6_literal_is_verified_as_that_address(
        dns, world, tmp_path, trust):
    """`smtp+tls://[IPv6:::1]:PORT`: the certificate must carry the address
    ::1 (not the text "IPv6:::1"); with the action's `ca` it does, and the
    message goes; trusting only the system's CAs, the same certificate
    fails verification, temporarily."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "v6-ca.crt"))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("::1").configure_cert(ctx)
    server = dns(Zones())
    async with Peer(starttls_peer(ctx), host="::1") as peer:
        extra = f'ca "v6" cert "{tmp_path / "v6-ca.crt"}"'
        w = await world(server.port, f' host "smtp+tls://[IPv6:::1]:{peer.port}"'
                                     + (' ca "v6"' if trust == "ca" else ""), extra=extra)
        await w.send(["bob@remote.test"])
        await w.wait_log("mta delivery", "to=<bob@remote.test>")
    [line] = w.lines("mta delivery")
    if trust == "ca":
        assert "result=Ok" in line and "relay=::1 " in line
        assert len(peer.conns[0].messages) == 1
        assert w.lines(f"mta connecting address=smtp+tls://[::1]:{peer.port} host=::1")
    else:
        assert "result=TempFail" in line
        assert w.lines("mta error", "Certificate verification failed")
        assert not any(conn.messages for conn in peer.conns)
        await w.wait_retry()                    # kept for a later try


