"""Every backend answers the same logical tables the same way.

Run against static, file, db, SQLite, the real PostgreSQL, MariaDB and
Redis servers, our own slapd (LDAP), socketmap and proc (see conftest.py).  List matching
(wildcards, CIDR) is the table's job only for static and file lists; an SQL
query gets the key as is, so those tests use `list_builder`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import sqlite3

import pytest

from postillion.errors import LookupUnavailable
from postillion.table import (
    Credentials, Domain, ExpandList, Service, TableError, Userinfo,
)

ALIASES = {
    "postmaster@example.test": "alice@example.test",
    "root": "alice, bob",
    "Carol": "carol@elsewhere.test",
    "list": '"|/usr/bin/cmd a,b", dave',
}
USERS = {
    "alice": "1000:1000:/home/alice",
    "bob": "bob:1001:1001:/home/bob",        # the 2012 four-field form
    "Carol": "1002:1002:/var/vmail/carol",
}
CREDENTIALS = {
    "alice": "alice:$2b$12$abcdefghijklmnopqrstuv",
    "bob": "$6$salt$hash",                   # `secret` alone: user = key
}
DOMAINS = ["example.test", "Mixed.Test", "other.test"]

INJECTIONS = [
    "alice' OR '1'='1",
    "alice\" OR \"1\"=\"1",
    "alice'; DROP TABLE t; --",
    "alice\n",
    "alice\r\nDATA",
    "alice\x00",
    "%",
    "a%",
    "_",
    "*",
    "alice\\",
    "\udcff",
    # netstring framing (socketmap), the line protocol's separators (proc)
    "5:alice,",
    "alice,3:bob,",
    "0:,",
    ":",
    "alice|found|x",
    "x" * 20_000,
]


async def test_alias_found(builder):
    t = await builder.map("aliases", Service.ALIAS, ALIASES)
    assert await t.lookup(Service.ALIAS, "postmaster@example.test") == \
        ExpandList(("alice@example.test",))
    assert await t.lookup(Service.ALIAS, "root") == ExpandList(("alice", "bob"))
    assert await t.lookup(Service.ALIAS, "list") == ExpandList(("|/usr/bin/cmd a,b", "dave"))


async def test_not_found_is_none(builder):
    t = await builder.map("aliases", Service.ALIAS, ALIASES)
    assert await t.lookup(Service.ALIAS, "nobody@example.test") is None
    assert await t.check(Service.ALIAS, "nobody@example.test") is False


async def test_keys_are_lowercased(builder):
    t = await builder.map("aliases", Service.ALIAS, ALIASES)
    assert await t.lookup(Service.ALIAS, "PostMaster@EXAMPLE.test") == \
        ExpandList(("alice@example.test",))
    assert await t.lookup(Service.ALIAS, "CAROL") == ExpandList(("carol@elsewhere.test",))
    assert await t.lookup(Service.ALIAS, "carol") == ExpandList(("carol@elsewhere.test",))


async def test_values_are_not_lowercased(builder):
    t = await builder.map("creds", Service.CREDENTIALS, {"Eve": "Eve:SeCrEt"})
    assert await t.lookup(Service.CREDENTIALS, "eve") == Credentials("Eve", "SeCrEt")


async def test_check_on_map_is_key_exists(builder):
    t = await builder.map("aliases", Service.ALIAS, ALIASES)
    assert await t.check(Service.ALIAS, "ROOT") is True


async def test_userinfo_both_forms(builder):
    t = await builder.map("users", Service.USERINFO, USERS)
    assert await t.lookup(Service.USERINFO, "alice") == Userinfo("alice", 1000, 1000, "/home/alice")
    assert await t.lookup(Service.USERINFO, "bob") == Userinfo("bob", 1001, 1001, "/home/bob")
    assert await t.lookup(Service.USERINFO, "CAROL") == \
        Userinfo("carol", 1002, 1002, "/var/vmail/carol")
    assert await t.lookup(Service.USERINFO, "nobody") is None


async def test_credentials_both_forms(builder):
    t = await builder.map("creds", Service.CREDENTIALS, CREDENTIALS)
    assert await t.lookup(Service.CREDENTIALS, "alice") == \
        Credentials("alice", "$2b$12$abcdefghijklmnopqrstuv")
    assert await t.lookup(Service.CREDENTIALS, "BOB") == Credentials("bob", "$6$salt$hash")


BAD_USERINFO = {
    "nodigits": "abc:1000:/home/x",
    "relhome": "1000:1000:home/x",
    "short": "1000:/home/x",
    "nohome": "1000:1000:",
    "negative": "-1:1000:/home/x",
    "huge": "99999999999:1000:/home/x",
}
BAD_CREDENTIALS = {
    "nouser": ":s3cr3t-value",
    "nosecret": "alice:",
}


@pytest.mark.parametrize("key", sorted(BAD_USERINFO))
async def test_malformed_userinfo_is_error(builder, key, caplog):
    t = await builder.map("users", Service.USERINFO, {**USERS, **BAD_USERINFO})
    with caplog.at_level(logging.WARNING, logger="postillion.table"):
        with pytest.raises(LookupUnavailable) as info:
            await t.lookup(Service.USERINFO, key)
    assert info.value.reply.code == 451 and info.value.reply.enhanced == "4.3.0"
    text = caplog.text
    assert "users" in text and "userinfo" in text and f'"{key}"' in text
    assert "/home/x" not in text and "/home/x" not in info.value.reason
    # the table keeps answering the good keys
    assert await t.lookup(Service.USERINFO, "alice") == Userinfo("alice", 1000, 1000, "/home/alice")


@pytest.mark.parametrize("key", sorted(BAD_CREDENTIALS))
async def test_malformed_credentials_is_error(builder, key, caplog):
    t = await builder.map("creds", Service.CREDENTIALS, {**CREDENTIALS, **BAD_CREDENTIALS})
    with caplog.at_level(logging.WARNING, logger="postillion.table"):
        with pytest.raises(LookupUnavailable):
            await t.lookup(Service.CREDENTIALS, key)
    assert "creds" in caplog.text and "credentials" in caplog.text and f'"{key}"' in caplog.text
    assert "s3cr3t-value" not in caplog.text


async def test_domain_check(builder):
    t = await builder.list("domains", Service.DOMAIN, DOMAINS)
    assert await t.check(Service.DOMAIN, "example.test")
    assert await t.check(Service.DOMAIN, "EXAMPLE.TEST")
    assert await t.check(Service.DOMAIN, "mixed.test")
    assert not await t.check(Service.DOMAIN, "example.org")
    assert not await t.check(Service.DOMAIN, "sub.example.test")


async def test_domain_wildcard(list_builder):
    t = await list_builder.list("domains", Service.DOMAIN, ["*.wild.test", "example.test"])
    assert await t.check(Service.DOMAIN, "mx.wild.test")
    assert await t.check(Service.DOMAIN, "MX.Wild.Test")
    assert not await t.check(Service.DOMAIN, "wild.test")
    assert not await t.check(Service.DOMAIN, "a.b.wild.test")      # no backtracking
    assert await t.lookup(Service.DOMAIN, "mx.wild.test") == Domain("*.wild.test")
    assert await t.lookup(Service.DOMAIN, "nowhere.test") is None
    star = await list_builder.list("any", Service.DOMAIN, ["*"])
    assert await star.check(Service.DOMAIN, "anything.at.all")


NETWORKS = ["192.0.2.0/24", "2001:db8::/32", "local", "[198.51.100.7]", "IPv6:2001:dbf::1"]


@pytest.mark.parametrize("key, expected", [
    ("192.0.2.1", True),
    ("192.0.2.255", True),
    ("192.0.3.1", False),
    ("2001:db8::25", True),
    ("2001:DB8:ffff::1", True),
    ("2001:db9::1", False),
    ("local", True),
    ("LOCAL", True),
    ("198.51.100.7", True),
    ("198.51.100.8", False),
    ("2001:dbf::1", True),
    ("::ffff:192.0.2.9", True),          # IPv4-mapped, as a dual-stack socket reports
    ("unix", False),
    ("not-an-address", False),
    ("", False),
])
async def test_netaddr_cidr(list_builder, key, expected):
    t = await list_builder.list("nets", Service.NETADDR, NETWORKS)
    assert await t.check(Service.NETADDR, key) is expected


async def test_netaddr_lookup_on_list(list_builder):
    t = await list_builder.list("nets", Service.NETADDR, NETWORKS)
    value = await t.lookup(Service.NETADDR, "192.0.2.1")
    assert value is not None and value.network == ipaddress.ip_network("192.0.2.0/24")


async def test_malformed_list_element_is_error(list_builder, caplog):
    t = await list_builder.list("nets", Service.NETADDR, ["192.0.2.0/24", "10.0.0.0/33"])
    with caplog.at_level(logging.WARNING, logger="postillion.table"):
        with pytest.raises(LookupUnavailable):
            await t.check(Service.NETADDR, "192.0.2.1")
    assert "element 2" in caplog.text
    with pytest.raises(TableError, match="element 2"):
        await t.verify(Service.NETADDR)


async def test_mailaddr_patterns(list_builder):
    t = await list_builder.list("senders", Service.MAILADDR,
                                ["alice@example.test", "@*.wild.test", "bob"])
    assert await t.check(Service.MAILADDR, "Alice@Example.Test")
    assert await t.check(Service.MAILADDR, "alice+tag@example.test")
    assert not await t.check(Service.MAILADDR, "alice@other.test")
    assert await t.check(Service.MAILADDR, "anyone@mx.wild.test")
    assert await t.check(Service.MAILADDR, "bob@anywhere.test")
    assert not await t.check(Service.MAILADDR, "carol@example.test")
    everyone = await list_builder.list("all", Service.MAILADDR, ["@"])
    assert await everyone.check(Service.MAILADDR, "x@y.z")


@pytest.mark.parametrize("key", INJECTIONS, ids=lambda k: repr(k if len(k) < 30 else k[:10] + "..."))
async def test_injection_keys_find_nothing(builder, key):
    aliases = await builder.map("aliases", Service.ALIAS, ALIASES)
    users = await builder.map("users", Service.USERINFO, USERS)
    domains = await builder.list("domains", Service.DOMAIN, DOMAINS)
    assert await aliases.lookup(Service.ALIAS, key) is None
    assert await aliases.check(Service.ALIAS, key) is False
    assert await users.lookup(Service.USERINFO, key) is None
    assert await domains.check(Service.DOMAIN, key) is False
    # nothing broke: the good keys still answer
    assert await users.lookup(Service.USERINFO, "alice") == Userinfo("alice", 1000, 1000, "/home/alice")
    assert await aliases.lookup(Service.ALIAS, "root") == ExpandList(("alice", "bob"))
    if builder.kind == "sqlite":
        for name in ("aliases", "users"):
            db_file = sorted(builder.tmp.glob(f"{name}-*.sqlite"))[-1]
            db = sqlite3.connect(db_file)
            assert db.execute("SELECT count(*) FROM t").fetchone()[0] > 0
            db.close()
    if builder.kind in ("postgres", "mysql"):
        assert builder.stored_rows("aliases") == len(ALIASES)
        assert builder.stored_rows("users") == len(USERS)


async def test_injection_keys_on_lists(list_builder):
    nets = await list_builder.list("nets", Service.NETADDR, NETWORKS)
    senders = await list_builder.list("senders", Service.MAILADDR, ["alice@example.test"])
    for key in INJECTIONS:
        assert await nets.check(Service.NETADDR, key) is False
        assert await senders.check(Service.MAILADDR, key) is False


async def test_update_swaps_contents(updatable):
    t = await updatable.map("aliases", Service.ALIAS, {"old": "alice"})
    assert await t.lookup(Service.ALIAS, "old") == ExpandList(("alice",))
    updatable.rewrite_map("aliases", Service.ALIAS, {"new": "bob"})
    await t.update()
    assert await t.lookup(Service.ALIAS, "new") == ExpandList(("bob",))
    assert await t.lookup(Service.ALIAS, "old") is None


async def test_broken_update_keeps_old_contents(updatable):
    t = await updatable.map("aliases", Service.ALIAS, {"old": "alice"})
    updatable.break_source("aliases", Service.ALIAS)
    with pytest.raises(TableError, match=updatable.update_error):
        await t.update()
    assert await t.lookup(Service.ALIAS, "old") == ExpandList(("alice",))


async def test_serves(builder):
    users = await builder.map("users", Service.USERINFO, USERS)
    assert users.serves(Service.USERINFO)
    users.require(Service.USERINFO)
    assert not users.serves(Service.SOURCE)
    with pytest.raises(TableError, match=r"table users \(backend \w+\).* cannot serve service source"):
        users.require(Service.SOURCE)


SOURCES = ["192.0.2.1", "2001:db8::1", "198.51.100.7"]


async def test_fetch_is_cyclic(fetch_builder):
    t = await fetch_builder.sources("sources", SOURCES)
    got = [str((await t.fetch(Service.SOURCE)).address) for _ in range(7)]
    assert got == (SOURCES * 3)[:7]


async def test_fetch_empty_is_none(list_builder):
    t = await list_builder.list("sources", Service.SOURCE, [])
    assert await t.fetch(Service.SOURCE) is None


async def test_fetch_sees_a_changed_list(updatable_list):
    # Static tables change only with the config: not in updatable_list.
    t = await updatable_list.list("sources", Service.SOURCE, SOURCES[:2])
    assert str((await t.fetch(Service.SOURCE)).address) == SOURCES[0]
    updatable_list.rewrite_list("sources", Service.SOURCE, ["203.0.113.1", "203.0.113.2"])
    await t.update()
    seen = {str((await t.fetch(Service.SOURCE)).address) for _ in range(4)}
    assert seen == {"203.0.113.1", "203.0.113.2"}


async def test_update_under_concurrent_lookups(updatable):
    """Lookups racing updates see the old or the new map, never a mixture."""
    keys = [f"user{i}" for i in range(50)]
    old = {k: f"{k}-old-a, {k}-old-b" for k in keys}
    new = {k: f"{k}-new-a, {k}-new-b" for k in keys}
    t = await updatable.map("aliases", Service.ALIAS, old)
    answers = {ExpandList((f"{k}-{g}-a", f"{k}-{g}-b")) for k in keys for g in ("old", "new")}

    async def reader() -> set[str]:
        seen = set()
        for _ in range(6):
            for key in keys[::7]:
                value = await t.lookup(Service.ALIAS, key)
                assert value in answers and value.targets[0].startswith(key + "-")
                generation = value.targets[0].split("-")[1]
                assert value.targets[1] == f"{key}-{generation}-b"
                seen.add(generation)
        return seen

    async def writer() -> None:
        for i in range(6):
            updatable.rewrite_map("aliases", Service.ALIAS, new if i % 2 == 0 else old)
            await t.update()
            await asyncio.sleep(0)

    results = await asyncio.gather(*(reader() for _ in range(8)), writer())
    assert set().union(*results[:-1]) <= {"old", "new"}
    assert await t.lookup(Service.ALIAS, "user0") == ExpandList(("user0-old-a", "user0-old-b"))


BAD_VALUES = [
    (Service.ALIAS, "pipe", "alice, |"),
    (Service.ALIAS, "include", ":include:relative/path"),
    (Service.ALIAS, "err", "error:250 not an error"),
    (Service.MAILADDRMAP, "senders", "alice@"),
    (Service.ADDRNAME, "helo", "two words"),
    (Service.RELAYHOST, "relay", "smtp://a b"),
]


@pytest.mark.parametrize("service, key, raw", BAD_VALUES, ids=lambda v: getattr(v, "value", v))
async def test_each_malformed_value_is_an_error(builder, service, key, raw, caplog):
    """Static and file tables refuse it when checked at load; every backend at lookup."""
    t = await builder.map("t", service, {key: raw, "good": "alice@example.org"})
    if builder.kind in ("static", "file"):
        with pytest.raises(TableError, match=f'key "{key}": malformed {service.value} value'):
            await t.verify(service)
    with caplog.at_level(logging.WARNING, logger="postillion.table"):
        with pytest.raises(LookupUnavailable):
            await t.lookup(service, key)
    assert f'"{key}"' in caplog.text and raw not in caplog.text
    assert await t.lookup(service, "good") is not None
