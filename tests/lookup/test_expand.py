"""Recipient expansion and rules, on real static tables parsed from real config text."""

from __future__ import annotations

import pytest

from postillion.config import parse
from postillion.daemon import INTERNAL, open_tables
from postillion.errors import LookupUnavailable, PermFail, TempFail
from postillion.lookup.expand import Expander, alias_keys, virtual_keys
from postillion.rules import Ruleset, SessionFacts

CONFIG = """\
hostname mx.example.test
table domains { example.test, "*.example.org" }
table virtuals {
    alice@example.test = alice
    bob@example.test = "bob, alice"
    postmaster@example.test = alice
    loop@example.test = loop1
    loop1 = loop2
    loop2 = loop1
    deep@example.test = d1
    d1 = d2
    d2 = d3
    d3 = d4
    d4 = d5
    d5 = d6
    d6 = d7
    d7 = d8
    d8 = d9
    d9 = d10
    d10 = d11
    d11 = alice
    gone@example.test = "error:550 Gone away"
    later@example.test = "error:451 Try later"
    self@example.test = self
    ghost@example.test = ghost
    pipe@example.test = "|/bin/cat"
    @example.org = alice
}
table users {
    alice = "1000:1000:/home/alice"
    bob = "1001:1001:/home/bob"
    self = "1002:1002:/home/self"
}
table broken_users { broken = "x:y" }
table nets { 192.0.2.0/24, "2001:db8::/32" }
action "vmail" maildir virtual <virtuals> userbase <users>
action "other" maildir userbase <users>
match from src <nets> for domain <domains> action "other"
match from any for domain <domains> action "vmail"
match !from local for any reject
match from local for any action "other"
"""


@pytest.fixture
async def world(tmp_path):
    config = parse(CONFIG, str(tmp_path / "smtpd.conf"))
    tables = await open_tables(config)
    ruleset = Ruleset(config, tables)

    async def route(address):
        return await ruleset.match(INTERNAL, "", address)

    yield config, ruleset, Expander(tables, config.limits, route)
    for t in tables.values():
        await t.close()


REMOTE = SessionFacts(address="198.51.100.7", is_local=False)


async def test_first_match_wins_and_negation(world):
    config, ruleset, _ = world
    assert (await ruleset.match(SessionFacts("192.0.2.9", False), "", "a@example.test")).name == "other"
    assert (await ruleset.match(REMOTE, "", "a@example.test")).name == "vmail"
    assert (await ruleset.match(REMOTE, "", "a@mx.example.org")).name == "vmail"
    # A foreign domain from a remote client: `!from local ... reject`.
    assert await ruleset.match(REMOTE, "", "a@example.net") is None
    # A local client may relay per the last rule; a v6 client in <nets> gets "other".
    assert (await ruleset.match(SessionFacts("127.0.0.1", True), "", "a@example.net")).name == "other"
    assert (await ruleset.match(SessionFacts("2001:db8::1", False), "", "a@example.test")).name == "other"


async def test_virtual_user_and_alias_chain(world):
    config, _, expander = world
    vmail = config.actions["vmail"]
    [d] = await expander.expand("alice@example.test", vmail)
    assert (d.dispatcher, d.user, d.dest) == ("vmail", "alice", "alice@example.test")
    deliveries = await expander.expand("bob@example.test", vmail)
    assert sorted(d.user for d in deliveries) == ["alice", "bob"]
    [d] = await expander.expand("POSTMASTER@Example.Test", vmail)
    assert d.user == "alice"


async def test_catch_all_and_subaddress(world):
    config, _, expander = world
    vmail = config.actions["vmail"]
    [d] = await expander.expand("anyone@example.org", vmail)
    assert d.user == "alice"
    [d] = await expander.expand("alice+lists@example.test", vmail)
    assert d.user == "alice"


async def test_unknown_and_errors(world):
    config, _, expander = world
    vmail = config.actions["vmail"]
    with pytest.raises(PermFail) as e:
        await expander.expand("nobody@example.test", vmail)
    assert (e.value.reply.code, e.value.reply.enhanced) == (550, "5.1.1")
    with pytest.raises(PermFail) as e:
        await expander.expand("ghost@example.test", vmail)  # aliased to a user with no userinfo
    assert e.value.reply.enhanced == "5.1.1"
    with pytest.raises(PermFail) as e:
        await expander.expand("gone@example.test", vmail)
    assert (e.value.reply.code, e.value.reply.text) == (550, "Gone away")
    with pytest.raises(TempFail) as e:
        await expander.expand("later@example.test", vmail)
    assert e.value.reply.code == 451
    # A command from an alias table: a delivery of its own, run as the queue user.
    [d] = await expander.expand("pipe@example.test", vmail)
    assert (d.exec, d.user, d.dest, d.dispatcher) == ("|/bin/cat", "", "pipe@example.test", "vmail")


async def test_loops_and_depth(world):
    config, _, expander = world
    vmail = config.actions["vmail"]
    with pytest.raises(PermFail) as e:
        await expander.expand("loop@example.test", vmail)
    assert e.value.reply.enhanced == "5.2.4"
    with pytest.raises(PermFail) as e:
        await expander.expand("deep@example.test", vmail)
    assert e.value.reply.enhanced == "5.2.4"
    # A user aliased to itself is delivered (the loop guard), not refused.
    [d] = await expander.expand("self@example.test", vmail)
    assert d.user == "self"


async def test_malformed_value_is_temporary(tmp_path):
    # Static and file tables are checked when opened (Table.verify); a db
    # map's values are parsed one lookup at a time, so a bad one is an ERROR.
    from postillion.table.dbfile import Entry, write_map
    write_map([Entry("broken", "not a userinfo", 1)], str(tmp_path / "users.db"), "map", "users")
    users = CONFIG[CONFIG.index("table users {"):CONFIG.index("table broken_users")]
    config = parse(CONFIG.replace(users, "table users db:users.db\n"), str(tmp_path / "smtpd.conf"))
    tables = await open_tables(config)
    expander = Expander(tables, config.limits, lambda address: None)
    with pytest.raises(LookupUnavailable) as e:
        await expander.expand("broken@example.test", config.actions["other"])
    assert (e.value.reply.code, e.value.reply.enhanced) == (451, "4.3.0")
    for t in tables.values():
        await t.close()


def test_key_orders():
    assert virtual_keys("user+tag", "dom", "+") == [
        "user+tag@dom", "user@dom", "user+tag", "user", "@dom", "@"]
    assert virtual_keys("user", "dom", "+") == ["user@dom", "user", "@dom", "@"]
    assert alias_keys("user+tag", "+") == ["user+tag", "user"]
    assert alias_keys("+tag", "+") == ["+tag"]


async def test_default_userbase_is_the_system_password_database(tmp_path):
    """Without `userbase`, a local user is a system account (`<getpwnam>`)."""
    config = parse('action "sys" maildir\nmatch from local for local action "sys"\n',
                   str(tmp_path / "smtpd.conf"))
    expander = Expander({}, config.limits, lambda a: None)
    [d] = await expander.expand("root@localhost", config.actions["sys"])
    assert d.user == "root"
    with pytest.raises(PermFail) as e:
        await expander.expand("no-such-user-here@localhost", config.actions["sys"])
    assert e.value.reply.enhanced == "5.1.1"


RELAY_CONFIG = """\
table users { alice = "1000:1000:/home/alice" }
table aliases { list = "alice, remote@example.net" }
action "local" maildir alias <aliases> userbase <users>
action "out" relay
match from any for domain example.test action "local"
match from local for any action "out"
"""


async def test_relay_action_relays_the_address_as_written(tmp_path):
    config = parse(RELAY_CONFIG, str(tmp_path / "smtpd.conf"))
    tables = await open_tables(config)
    ruleset = Ruleset(config, tables)

    async def route(address):
        return await ruleset.match(INTERNAL, "", address)

    expander = Expander(tables, config.limits, route)
    try:
        [d] = await expander.expand("Someone+Tag@Example.NET", config.actions["out"])
        assert (d.dispatcher, d.user, d.dest, d.agent) == ("out", "", "Someone+Tag@Example.NET", "mta")
        # An alias target outside our domains goes through the rules again: relayed.
        deliveries = await expander.expand("list@example.test", config.actions["local"])
        assert sorted((d.agent, d.dest) for d in deliveries) == [
            ("mda", "alice@example.test"), ("mta", "remote@example.net")]
    finally:
        for t in tables.values():
            await t.close()
