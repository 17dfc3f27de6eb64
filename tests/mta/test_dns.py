"""The MTA's DNS layer against a real DNS server (dnsmasq on loopback).

Each outcome of docs/architecture.md's table (The MTA: DNS) is asked of a
real server: preference order, implicit MX, null MX, NXDOMAIN, SERVFAIL,
timeouts, MX hosts without addresses, backup filtering, the cache.
Timeouts are set short, so the broken-server cases take under a second.
"""

from __future__ import annotations

import asyncio
import random
import re
import time

import pytest

from postillion.errors import PermFail, TempFail
from postillion.mta.dns import (
    HOST_NOT_FOUND,
    HOST_TEMPFAIL,
    INVALID_DOMAIN,
    MX_LOOP,
    MX_TEMPFAIL,
    NO_MX,
    NO_SUCH_DOMAIN,
    NULL_MX,
    DnsSettings,
    MxHost,
    MxResolver,
)
from tests import dnsserver
from tests.dnsserver import Zones
from tests.e2e.conftest import free_port

FAST = DnsSettings(timeout=0.3, lifetime=0.6)
#: For lookups that must fail because the server was stopped: quick to give up.
QUICK = DnsSettings(timeout=0.1, lifetime=0.15)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver(server, settings: DnsSettings = FAST, **kw) -> MxResolver:
    return MxResolver(server.nameservers, settings, **kw)


def queries(server, rdtype: str, name: str) -> int:
    """How many times the server was asked (name, type): dnsmasq logs each query."""
    return len(re.findall(rf"query\[{rdtype}\] {re.escape(name)} from", server.log()))


# -- where the mail goes ----------------------------------------------------


async def test_mx_hosts_by_preference_with_their_addresses(dns_server):
    hosts = await resolver(dns_server).mx("mx.test")
    assert hosts[0] == MxHost(10, "mx1.mx.test", ("127.0.0.2", "::1"))
    assert sorted(hosts[1:], key=lambda h: h.name) == [
        MxHost(20, "mx2.mx.test", ("127.0.0.3",)), MxHost(20, "mx3.mx.test", ("127.0.0.4",))]


async def test_equal_preferences_are_shuffled_the_best_stays_first(dns_server):
    mta = resolver(dns_server, rng=random.Random(7))
    seen = set()
    for _ in range(30):
        hosts = await mta.mx("mx.test")
        assert hosts[0].name == "mx1.mx.test"
        seen.add(tuple(h.name for h in hosts[1:]))
    assert seen == {("mx2.mx.test", "mx3.mx.test"), ("mx3.mx.test", "mx2.mx.test")}


async def test_domain_names_are_case_and_dot_insensitive(dns_server):
    mta = resolver(dns_server)
    assert {h.name for h in await mta.mx("MX.Test.")} == {"mx1.mx.test", "mx2.mx.test", "mx3.mx.test"}


@pytest.mark.parametrize("domain,address", [("implicit.test", "127.0.0.5"), ("v6only.test", "::1")])
async def test_no_mx_means_the_domain_itself_at_preference_0(dns_server, domain, address):
    assert await resolver(dns_server).mx(domain) == [MxHost(0, domain, (address,))]


@pytest.mark.parametrize("domain,why", [("nullmx.test", "null MX"),
                                        ("localhost-mx.test", "MX is localhost")])
async def test_null_mx_and_localhost_mx_refuse_mail_for_good(dns_server, domain, why):
    with pytest.raises(PermFail) as caught:
        await resolver(dns_server).mx(domain)
    assert caught.value.reply == NULL_MX
    assert str(caught.value.reply) == "556 5.1.10 Domain does not accept mail"
    assert why in caught.value.reason and domain in caught.value.reason


async def test_localhost_beside_a_real_mx_is_skipped(dns_server):
    assert await resolver(dns_server).mx("half-localhost.test") == [
        MxHost(20, "mx2.mx.test", ("127.0.0.3",))]


async def test_nxdomain_is_permanent(dns_server):
    with pytest.raises(PermFail) as caught:
        await resolver(dns_server).mx("nowhere.test")
    assert caught.value.reply == NO_SUCH_DOMAIN
    assert str(caught.value.reply) == "550 5.1.2 Domain does not exist"
    assert "NXDOMAIN" in caught.value.reason


@pytest.mark.parametrize("domain", ["bad..name", "a" * 64 + ".test", ".", ""])
async def test_an_invalid_domain_name_is_permanent_without_asking(dns_server, domain):
    with pytest.raises(PermFail) as caught:
        await resolver(dns_server).mx(domain)
    assert caught.value.reply == INVALID_DOMAIN


async def test_servfail_is_temporary_and_quick(dns_server):
    started = time.monotonic()
    with pytest.raises(TempFail) as caught:
        await resolver(dns_server, DnsSettings(timeout=2, lifetime=4)).mx("servfail.test")
    assert time.monotonic() - started < 1.5         # SERVFAIL is an answer, not a wait
    assert caught.value.reply == MX_TEMPFAIL
    assert str(caught.value.reply) == "451 4.4.3 Temporary failure in MX lookup"
    assert "SERVFAIL" in caught.value.reason


async def test_a_silent_server_is_temporary_within_the_lifetime(dns_server):
    started = time.monotonic()
    with pytest.raises(TempFail) as caught:
        await resolver(dns_server, DnsSettings(timeout=0.2, lifetime=0.4)).mx("timeout.test")
    assert time.monotonic() - started < 2
    assert caught.value.reply == MX_TEMPFAIL
    assert "no answer within 0.4s" in caught.value.reason


async def test_mx_hosts_without_addresses_are_temporary(dns_server):
    with pytest.raises(TempFail) as caught:
        await resolver(dns_server).mx("noaddr.test")
    assert caught.value.reply == NO_MX
    assert str(caught.value.reply) == "451 4.4.4 No MX found for domain"
    assert "ghost.noaddr.test: no such host" in caught.value.reason
    assert "txt.noaddr.test: no A or AAAA record" in caught.value.reason


async def test_a_domain_with_neither_mx_nor_address_is_temporary(dns_server):
    with pytest.raises(TempFail) as caught:
        await resolver(dns_server).mx("bare.test")
    assert caught.value.reply == NO_MX


async def test_mx_hosts_without_addresses_are_left_out(dns_server):
    assert await resolver(dns_server).mx("partial.test") == [
        MxHost(20, "mx2.mx.test", ("127.0.0.3",))]


async def test_mx_hosts_whose_lookups_fail_are_temporary(dns_server):
    with pytest.raises(TempFail) as caught:
        await resolver(dns_server).mx("hostfail.test")
    assert caught.value.reply == MX_TEMPFAIL
    assert "mx.servfail.test" in caught.value.reason and "SERVFAIL" in caught.value.reason


async def test_only_the_best_max_mx_hosts_are_used(dns_servers):
    zones = Zones()
    for i in range(5):
        zones.mx("many.test", 10 * (5 - i), f"h{i}.many.test").host(f"h{i}.many.test", f"127.0.1.{i}")
    server = dns_servers(zones)
    hosts = await resolver(server, DnsSettings(timeout=0.3, lifetime=0.6, max_mx=2)).mx("many.test")
    assert [(h.preference, h.name) for h in hosts] == [(10, "h4.many.test"), (20, "h3.many.test")]


# -- in parallel ------------------------------------------------------------


async def test_address_lookups_of_mx_hosts_run_in_parallel(dns_servers):
    """Six lookups (A and AAAA of three hosts) that each time out take one timeout."""
    zones = (Zones().mx("slow.test", 10, "a.timeout.test").mx("slow.test", 20, "b.timeout.test")
             .mx("slow.test", 30, "c.timeout.test").timeout("timeout.test"))
    server = dns_servers(zones)
    started = time.monotonic()
    with pytest.raises(TempFail) as caught:
        await resolver(server, DnsSettings(timeout=0.5, lifetime=0.5)).mx("slow.test")
    assert time.monotonic() - started < 1.5          # in series: 6 x 0.5 s
    assert caught.value.reply == MX_TEMPFAIL
    assert all(f"{h}.timeout.test" in caught.value.reason for h in "abc")


async def test_many_domains_resolve_concurrently(dns_servers):
    zones = Zones()
    for i in range(40):
        zones.mx(f"d{i}.test", 10, f"mx.d{i}.test").mx(f"d{i}.test", 20, f"backup.d{i}.test")
        zones.host(f"mx.d{i}.test", f"127.0.2.{i}", "::1").host(f"backup.d{i}.test", f"127.0.3.{i}")
    server = dns_servers(zones)
    mta = resolver(server, DnsSettings(timeout=1, lifetime=3))
    results = await asyncio.gather(*(mta.mx(f"d{i}.test") for i in range(40)))
    for i, hosts in enumerate(results):
        assert hosts == [MxHost(10, f"mx.d{i}.test", (f"127.0.2.{i}", "::1")),
                         MxHost(20, f"backup.d{i}.test", (f"127.0.3.{i}",))]


async def test_concurrent_lookups_of_one_domain_share_one_query(dns_server):
    mta = resolver(dns_server)
    results = await asyncio.gather(*(mta.mx("mx.test") for _ in range(20)))
    assert all({h.name for h in hosts} == {"mx1.mx.test", "mx2.mx.test", "mx3.mx.test"}
               for hosts in results)
    assert queries(dns_server, "MX", "mx.test") == 1
    assert queries(dns_server, "A", "mx1.mx.test") == 1


# -- backup MX --------------------------------------------------------------


@pytest.mark.parametrize("me,expected", [
    ("backup2.backup.test", ["primary.backup.test", "backup1.backup.test"]),
    ("BACKUP1.Backup.Test.", ["primary.backup.test"]),
    ("elsewhere.test", ["primary.backup.test", "backup1.backup.test", "backup2.backup.test"]),
])
async def test_a_backup_mx_uses_only_better_mxs(dns_server, me, expected):
    hosts = await resolver(dns_server).mx("backup.test", backup=me)
    assert [h.name for h in hosts] == expected


async def test_a_backup_mx_that_is_the_best_left_is_a_loop(dns_server):
    with pytest.raises(TempFail) as caught:
        await resolver(dns_server).mx("backup.test", backup="primary.backup.test")
    assert caught.value.reply == MX_LOOP
    assert "primary.backup.test" in caught.value.reason


# -- relay hosts and literals -----------------------------------------------


async def test_a_relay_host_is_resolved_as_a_and_aaaa_never_mx(dns_server):
    mta = resolver(dns_server)
    assert await mta.addresses("smarthost.test") == ["127.0.0.9", "::1"]
    assert await mta.addresses("relay.test") == ["127.0.0.9", "::1"]     # a CNAME to it
    with pytest.raises(TempFail) as caught:
        await mta.addresses("mx.test")                                    # has MX, no A
    assert caught.value.reply == HOST_NOT_FOUND
    assert queries(dns_server, "MX", "mx.test") == 0


@pytest.mark.parametrize("host,reply,why", [
    ("nowhere.test", HOST_NOT_FOUND, "no such host (NXDOMAIN)"),
    ("bare.test", HOST_NOT_FOUND, "no A or AAAA record"),
    ("mx.servfail.test", HOST_TEMPFAIL, "SERVFAIL"),
])
async def test_a_relay_host_that_does_not_resolve_is_temporary(dns_server, host, reply, why):
    with pytest.raises(TempFail) as caught:
        await resolver(dns_server).addresses(host)
    assert caught.value.reply == reply and why in caught.value.reason


async def test_address_literals_need_no_dns():
    nobody = MxResolver([("127.0.0.1", free_port())], FAST)             # nothing listens there
    assert await nobody.mx("[127.0.0.1]") == [MxHost(0, "[127.0.0.1]", ("127.0.0.1",))]
    assert await nobody.mx("[IPv6:0:0::1]") == [MxHost(0, "[IPv6:0:0::1]", ("::1",))]
    assert await nobody.addresses("[IPv6:::1]") == ["::1"]
    assert await nobody.addresses("127.0.0.1") == ["127.0.0.1"]
    with pytest.raises(PermFail) as caught:
        await nobody.mx("[127.0.0.256]")
    assert caught.value.reply == INVALID_DOMAIN


async def test_ptr_names(dns_server):
    mta = resolver(dns_server, QUICK)
    assert await mta.ptr("127.0.0.2") == "mx1.mx.test"
    assert await mta.ptr("127.0.0.11") == "reverse-only.test"
    assert await mta.ptr("::1") in {"mx1.mx.test", "v6only.test", "smarthost.test"}
    assert await mta.ptr("127.0.0.99") is None
    assert await mta.ptr("not an address") is None
    dns_server.stop()
    assert await mta.ptr("127.0.0.3") is None                            # server down


# -- the cache ----------------------------------------------------------------


async def test_answers_are_served_from_the_cache_when_the_server_is_gone(dns_server):
    mta = resolver(dns_server, QUICK)
    first = await mta.mx("mx.test")
    assert await mta.mx("implicit.test")                                 # NODATA, then A
    with pytest.raises(PermFail):
        await mta.mx("nowhere.test")                                     # NXDOMAIN
    assert await mta.addresses("smarthost.test")
    dns_server.stop()
    assert set(await mta.mx("mx.test")) == set(first)
    assert await mta.mx("implicit.test") == [MxHost(0, "implicit.test", ("127.0.0.5",))]
    with pytest.raises(PermFail):
        await mta.mx("nowhere.test")
    assert await mta.addresses("smarthost.test") == ["127.0.0.9", "::1"]
    with pytest.raises(TempFail):                                        # not cached: asks
        await mta.mx("backup.test")
    mta.clear_cache()
    with pytest.raises(TempFail):
        await mta.mx("mx.test")


async def test_temporary_failures_are_not_cached(dns_server):
    mta = resolver(dns_server, QUICK)
    dns_server.stop()
    with pytest.raises(TempFail):
        await mta.mx("mx.test")
    dns_server.start()                                                   # same port
    assert (await mta.mx("mx.test"))[0].name == "mx1.mx.test"


async def test_an_answer_lives_as_long_as_its_ttl(dns_server):
    clock = Clock()
    mta = resolver(dns_server, QUICK, clock=clock)
    assert await mta.addresses("short.test") == ["127.0.0.10"]          # TTL 1 s
    assert await mta.addresses("smarthost.test")                          # TTL 300 s
    dns_server.stop()
    clock.now += 0.9
    assert await mta.addresses("short.test") == ["127.0.0.10"]
    clock.now += 0.2
    with pytest.raises(TempFail):
        await mta.addresses("short.test")
    clock.now += 290
    assert await mta.addresses("smarthost.test") == ["127.0.0.9", "::1"]
    clock.now += 10
    with pytest.raises(TempFail):
        await mta.addresses("smarthost.test")


async def test_ttls_are_capped_and_negative_answers_kept_briefly(dns_server):
    clock = Clock()
    mta = resolver(dns_server, DnsSettings(timeout=0.1, lifetime=0.15, max_ttl=60,
                                           negative_ttl=5), clock=clock)
    await mta.mx("mx.test")
    with pytest.raises(PermFail):
        await mta.mx("nowhere.test")
    dns_server.stop()
    clock.now += 4
    await mta.mx("mx.test")
    with pytest.raises(PermFail):
        await mta.mx("nowhere.test")
    clock.now += 2                                                       # past negative_ttl
    with pytest.raises(TempFail):
        await mta.mx("nowhere.test")
    await mta.mx("mx.test")
    clock.now += 55                                                      # past max_ttl
    with pytest.raises(TempFail):
        await mta.mx("mx.test")


# -- configuration -------------------------------------------------------------


async def test_any_port_and_the_next_nameserver_when_one_is_silent(dns_server):
    silent = ("127.0.0.1", free_port())
    mta = MxResolver([silent, *dns_server.nameservers], DnsSettings(timeout=0.1, lifetime=2))
    assert mta.nameservers == [silent, *dns_server.nameservers]
    assert (await mta.mx("implicit.test"))[0].addresses == ("127.0.0.5",)


def test_the_system_configuration_is_read_from_resolv_conf(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("search example.test\nnameserver 127.0.0.1\nnameserver ::1\n")
    assert MxResolver(resolv_conf=str(conf)).nameservers == [("127.0.0.1", 53), ("::1", 53)]


@pytest.mark.parametrize("content", [None, "# no nameserver here\n"])
async def test_no_nameserver_is_a_temporary_failure(tmp_path, content):
    conf = tmp_path / "resolv.conf"
    if content is not None:
        conf.write_text(content)
    mta = MxResolver(resolv_conf=str(conf))
    assert mta.nameservers == []
    with pytest.raises(TempFail) as caught:
        await mta.mx("mx.test")
    assert caught.value.reply == MX_TEMPFAIL and "no nameserver" in caught.value.reason
    with pytest.raises(TempFail) as caught:
        await mta.addresses("smarthost.test")
    assert caught.value.reply == HOST_TEMPFAIL


@pytest.mark.parametrize("servers", [[("localhost", 53)], [("127.0.0.1", 0)],
                                     [("127.0.0.1", 65536)]])
def test_explicit_nameservers_are_checked(servers):
    with pytest.raises(ValueError):
        MxResolver(servers)


def test_a_missing_dnsmasq_fails_loudly(monkeypatch):
    monkeypatch.setattr(dnsserver.shutil, "which", lambda *a, **k: None)
    with pytest.raises(AssertionError, match="dnsmasq-base"):
        dnsserver.dnsmasq_binary()
