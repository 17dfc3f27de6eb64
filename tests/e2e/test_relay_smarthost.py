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


async def test_smarthost_with_starttls_and_auth_reads_credentials_each_session(
        dns, world, secure_uvloop, tmp_path):
    """`relay host smtp+tls://label@...` with `auth <t>`: STARTTLS verified
    against the `ca`, then AUTH with the label's `user:password`, looked up
    at every session -- an edited credentials file applies to the next one.
    A refused password is a temporary failure of the relay's envelopes,
    logged with the 535; they wait in the queue and go once the file is
    fixed."""
    proc = secure_uvloop
    port = proc.ports["submission"]
    server = dns(Zones())                  # the smarthost is an address: no query
    credentials = tmp_path / "relay-credentials"
    credentials.write_text(f"submission {USER}:{PASSWORD}\n")
    extra = (f"table relaycreds file:{credentials}\n"
             f'ca "smarthost" cert "{tmp_path / "ca.crt"}"\n{NO_DELAYS}\n'
             "mta limit max-conn-per-route 1")         # one session at a time
    w = await world(server.port, f' host "smtp+tls://submission@127.0.0.1:{port}"'
                                 ' auth <relaycreds> ca "smarthost"',
                    extra=extra, local_domain="sender.test")
    sender = f"{USER}@example.org"         # a sender the smarthost lets gilles use

    await w.send(["bob@example.test"], sender=sender, body="first")
    [first] = await until(lambda: proc.delivered("bob"), "not delivered by the smarthost",
                          w.loop_log)
    assert b"Subject: first" in first.read_bytes()
    log = await w.wait_log("mta delivery")
    [delivery] = w.lines("mta delivery", "to=<bob@example.test>")
    assert "result=Ok" in delivery and "stat=\"250 2.0.0" in delivery
    assert "relay=127.0.0.1 " in delivery              # an address, named once
    assert f"mta connecting address=smtp+tls://127.0.0.1:{port} host=127.0.0.1" in log
    assert w.lines("mta tls ciphers=TLSv1.")
    assert w.lines("smtp authentication user=gilles result=ok")
    await w.wait_empty()

    # An administrator edits the file (a password the smarthost refuses): the
    # file table follows its file by itself, noticing within STAT_INTERVAL.
    credentials.write_text(f"submission {USER}:not the password\n")
    await asyncio.sleep(FileBackend.STAT_INTERVAL + 0.1)
    for i in range(3):
        await w.send(["bob@example.test"], sender=sender, body=f"queued {i}")
    queued = await w.wait_retry(3)
    assert all(e.esc_class == 4 and "535" in e.errorline for e in queued)
    failed = w.lines("mta delivery", "result=TempFail")
    assert len(failed) == 3
    assert all("AUTH rejected: 535" in line and "stat=\"451 4.7.8" in line for line in failed)
    assert w.lines("mta error", "AUTH rejected: 535")
    refused = len(w.lines("smtp authentication user=gilles result=permfail"))
    assert 1 <= refused <= 3
    assert len(proc.delivered("bob")) == 1

    # Three envelopes waiting at once cost the smarthost one refused AUTH, not
    # one each: the next session would present the same credentials.
    w.retry_now()
    await w.wait_log("mta delivery", "result=TempFail", count=6)
    await until(lambda: len(w.lines("smtp authentication", "result=permfail")) > refused,
                "the smarthost saw no AUTH", w.loop_log)
    await asyncio.sleep(0.3)
    assert len(w.lines("smtp authentication", "result=permfail")) == refused + 1
    assert len(w.lines("mta connecting")) == 1 + refused + 1

    # Fixed, and the tables updated (SIGHUP): the next attempt authenticates,
    # and the three go in one session.
    credentials.write_text(f"submission {USER}:{PASSWORD}\n")
    await w.daemon.update_tables()
    await w.wait_retry(3)
    w.retry_now()
    await until(lambda: len(proc.delivered("bob")) == 4, "not delivered after the fix",
                w.loop_log)
    await w.wait_log("mta disconnected reason=quit messages=3")
    assert len(w.lines("mta delivery", "result=Ok")) == 4
    await until(lambda: w.queued() == [], "still queued", w.loop_log)


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
        [envelope] = await w.wait_retry()
        assert "Certificate verification failed" in envelope.errorline


async def test_sources_cycle_and_each_announces_its_helo_src_name(dns, world):
    """`src <t>` with two of our addresses: sessions take them in turn, and
    each says EHLO with the name `helo-src <t>` maps its address to."""
    base = net()
    server = dns(Zones().mx("remote.test", 10, "mx.remote.test").host("mx.remote.test", f"{base}.2"))
    names = {f"{base}.10": "out-a.example.test", f"{base}.11": "out-b.example.test"}
    sources = ", ".join(f'"{address}"' for address in names)
    helos = ", ".join(f'"{address}" = "{name}"' for address, name in names.items())
    w = await world(server.port, " src <sources> helo-src <helos>",
                    extra=f"table sources {{ {sources} }}\ntable helos {{ {helos} }}\n{NO_DELAYS}")
    async with Peer(receiver([]), host=f"{base}.2", port=25) as mx:
        for i in range(4):          # one message at a time: one session each
            await w.send([f"user{i}@remote.test"], body=f"message {i}")
            await w.wait_log("result=Ok", count=i + 1)
    assert len(mx.conns) == 4
    seen = [conn.peer[0] for conn in mx.conns]
    assert set(seen) == set(names)
    assert seen[0] != seen[1] and seen[1] != seen[2]        # in turn
    for conn in mx.conns:
        assert conn.lines[0] == f"EHLO {names[conn.peer[0]]}"
        assert len(conn.messages) == 1
    for address in names:
        assert len(w.lines("mta delivery", f"source={address}", "result=Ok")) == 2
    await w.wait_empty()


# -- hostile next hops: each script plays one broken server -----------------------

#: Far more continuation lines than a client may read of one reply (1000).
ENDLESS_LINES = 100_000
HUGE_LINE = 10 * 1024 * 1024


async def endless_ehlo(conn: Conn) -> None:
    """Greets, then answers EHLO with `250-` lines that never end."""
    await conn.send("220 endless.test ESMTP\r\n")
    await conn.line()
    chunk = b"250-PIPELINING and then some more text to fill the line\r\n" * 1000
    for _ in range(ENDLESS_LINES // 1000):
        await conn.send(chunk)


async def huge_reply_line(conn: Conn) -> None:
    """Greets, then answers EHLO with one 10 MB line."""
    await conn.send("220 huge.test ESMTP\r\n")
    await conn.line()
    await conn.send(b"250 " + b"x" * HUGE_LINE + b"\r\n")


async def stall_after_data(conn: Conn) -> None:
    """A good server until the final dot; then silence until the client leaves."""
    await conn.send("220 stall.test ESMTP\r\n")
    while True:
        verb = (await conn.line())[:4].upper()
        if verb == "EHLO":
            await conn.send(ehlo_reply(("PIPELINING",)))
        elif verb in ("MAIL", "RCPT"):
            await conn.send("250 2.0.0 Ok\r\n")
        elif verb == "DATA":
            await conn.send("354 go ahead\r\n")
            await conn.data()
            await asyncio.wait_for(conn.reader.read(), READ_TIMEOUT)    # b"": the client left
            return
        else:
            await conn.send("502 5.5.1 Not here\r\n")


#: Short client timeouts, so the stalled server costs a second, not ten minutes.
QUICK = ClientLimits(connect_timeout=2, tls_timeout=2, reply_timeout=1, data_end_timeout=1,
                     send_timeout=2, quit_timeout=1)


async def test_hostile_next_hops_cost_their_envelopes_a_temporary_failure_only(dns, world):
    """Endless `250-` lines, a 10 MB reply line, silence after the dot: each
    fails its own envelope temporarily (kept queued, no bounce), while a
    healthy domain of the same message is delivered meanwhile, and the
    daemon goes on relaying."""
    base = net()
    zones = Zones()
    hops = {"good": f"{base}.2", "endless": f"{base}.3", "huge": f"{base}.4", "stall": f"{base}.5"}
    for name, address in hops.items():
        zones.mx(f"{name}.test", 10, f"mx.{name}.test").host(f"mx.{name}.test", address)
    server = dns(zones)
    w = await world(server.port, extra=NO_DELAYS)
    assert w.daemon.mta is not None
    w.daemon.mta.client_limits = QUICK
    async with Peer(receiver([]), host=hops["good"], port=25) as good, \
            Peer(endless_ehlo, host=hops["endless"], port=25), \
            Peer(huge_reply_line, host=hops["huge"], port=25), \
            Peer(stall_after_data, host=hops["stall"], port=25) as stall:
        started = time.monotonic()
        await w.send(["a@endless.test", "b@huge.test", "c@stall.test", "d@good.test"])
        await w.wait_log("result=TempFail", count=3)
        elapsed = time.monotonic() - started
        assert len(good.conns) == 1 and len(good.conns[0].messages) == 1
        assert stall.conns and stall.conns[0].messages          # it got the message, said nothing
        # The daemon goes on: the next message to the healthy domain goes too.
        await w.send(["e@good.test"], body="later")
        await w.wait_log("mta delivery", "to=<e@good.test>")
    assert elapsed < 10
    # Each failure is logged with what happened, on its session and on the
    # envelope (whose error line a later bounce would quote).
    for rcpt, host, why in (("a@endless.test", hops["endless"], "reply of more than 1000 lines"),
                            ("b@huge.test", hops["huge"], "reply line longer than 512 octets")):
        assert w.lines("mta error", why)
        [line] = w.lines("mta delivery", f"to=<{rcpt}>")
        assert "result=TempFail" in line
        assert f'stat="451 4.4.0 No valid route to remote MX ({host}: {why})"' in line
    [line] = w.lines("mta delivery", "to=<c@stall.test>")
    assert 'result=TempFail stat="451 4.4.2 timeout after 1s waiting for the reply to ."' in line
    assert w.lines("mta error", "timeout after 1s")
    assert w.lines("mta disconnected reason=error messages=1")
    # Not held up: the healthy copy went before the stalled one gave up.
    order = [line for line in w.loop_log if " mta delivery " in line]
    assert _index(order, "to=<d@good.test>", "result=Ok") < _index(order, "to=<c@stall.test>")
    assert len(w.lines("mta delivery", "@good.test", "result=Ok")) == 2
    queued = await w.wait_retry(3)
    assert sorted(e.dest for e in queued) == ["a@endless.test", "b@huge.test", "c@stall.test"]
    assert all(e.esc_class == 4 for e in queued)
    assert w.mailbox("alice") == []                 # nothing bounced


async def test_an_envelope_whose_relay_keeps_failing_expires_into_a_failed_dsn(dns, world):
    """`queue ttl 2s` and an MX that refuses connections: the first attempt
    fails temporarily, the next due time is the expiry, and the sender gets
    a `failed` DSN with 4.4.7 naming the last error."""
    base = net()
    server = dns(Zones().mx("dead.test", 10, "mx.dead.test").host("mx.dead.test", f"{base}.2"))
    w = await world(server.port, extra="queue ttl 2s")
    started = time.monotonic()
    await w.send(["someone@dead.test"])
    await w.wait_log("result=TempFail")
    [dsn_path] = await w.wait_mailbox("alice", timeout=10)
    assert time.monotonic() - started < 8
    log = await w.wait_log("queue expire")
    assert "to=<someone@dead.test>" in w.lines("queue expire")[0]
    assert "result=Expire" in log
    dsn = email.message_from_bytes(dsn_path.read_bytes(), policy=email.policy.default)
    assert dsn["Subject"] == "Delivery status notification: failed"
    assert dsn["To"].addresses[0].addr_spec == SENDER
    _, status, _ = dsn.get_payload()
    report = status.as_string()
    assert "Action: failed" in report and "Status: 4.4.7" in report
    assert "someone@dead.test" in report
    assert "Envelope expired" in report
    # The last error, kept: which host, and what it did.
    assert f"Network error on destination MXs ({base}.2: Connection failed: Connection refused)" \
        in report.replace("\n ", " ")
    await until(lambda: w.queued() == [], "still queued", w.loop_log)


def _index(lines: list[str], *texts: str) -> int:
    return next(i for i, line in enumerate(lines) if all(t in line for t in texts))
