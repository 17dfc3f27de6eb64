"""`sqlite:` tables against real SQLite files: the demo, checks at open, errors."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import sqlite3
import time

import pytest

from postillion.errors import LookupUnavailable
from postillion.table import (
    Credentials, Domain, ExpandList, Service, Source, TableError, Userinfo, open_table,
)

DEMO_CONF = """\
dbpath tables.sqlite
query_domain SELECT name FROM domains WHERE name = ?
query_alias SELECT target FROM virtuals WHERE address = ?
query_userinfo SELECT uid, gid, home FROM users WHERE name = ?
query_credentials SELECT name, hash FROM credentials WHERE name = ?
"""


def make_demo_db(path):
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE domains (name TEXT);
        CREATE TABLE virtuals (address TEXT, target TEXT);
        CREATE TABLE users (name TEXT, uid INTEGER, gid INTEGER, home TEXT);
        CREATE TABLE credentials (name TEXT, hash TEXT);
        INSERT INTO domains VALUES ('example.test');
        INSERT INTO virtuals VALUES ('postmaster@example.test', 'alice@example.test');
        INSERT INTO virtuals VALUES ('alice@example.test', 'alice');
        INSERT INTO virtuals VALUES ('team@example.test', 'alice');
        INSERT INTO virtuals VALUES ('team@example.test', 'bob');
        INSERT INTO users VALUES ('alice', 1000, 1000, '/var/vmail/alice');
        INSERT INTO users VALUES ('broken', NULL, 1000, '/var/vmail/broken');
        INSERT INTO credentials VALUES ('alice', '$2b$12$abcdefghijklmnopqrstuv');
    """)
    db.commit()
    db.close()


@pytest.fixture
def demo(tmp_path):
    make_demo_db(tmp_path / "tables.sqlite")
    conf = tmp_path / "sqlite.conf"
    conf.write_text(DEMO_CONF)
    return conf


@pytest.fixture
async def table(demo):
    t = open_table("demo", "sqlite", str(demo))
    await t.open()
    yield t
    await t.close()


async def open_conf(tmp_path, text, name="t", **kw):
    conf = tmp_path / "sqlite.conf"
    conf.write_text(text)
    t = open_table(name, "sqlite", str(conf), **kw)
    await t.open()
    return t


async def test_demo_config(table):
    assert await table.check(Service.DOMAIN, "example.test")
    assert await table.check(Service.DOMAIN, "Example.TEST")
    assert not await table.check(Service.DOMAIN, "example.org")
    assert await table.lookup(Service.DOMAIN, "example.test") == Domain("example.test")
    assert await table.lookup(Service.ALIAS, "postmaster@example.test") == \
        ExpandList(("alice@example.test",))
    assert await table.lookup(Service.USERINFO, "alice") == \
        Userinfo("alice", 1000, 1000, "/var/vmail/alice")
    assert await table.lookup(Service.CREDENTIALS, "alice") == \
        Credentials("alice", "$2b$12$abcdefghijklmnopqrstuv")
    assert await table.lookup(Service.ALIAS, "nobody@example.test") is None
    for service in (Service.DOMAIN, Service.ALIAS, Service.USERINFO, Service.CREDENTIALS):
        table.require(service)
    assert not table.serves(Service.NETADDR)
    with pytest.raises(TableError, match=r"table demo \(backend sqlite\) cannot serve service netaddr"):
        table.require(Service.NETADDR)


async def test_virtual_key_order_lookups(table):
    # The lookup layer tries user+tag@dom, user@dom, user+tag, user, @dom, @.
    keys = ["alice+news@example.test", "alice@example.test", "alice+news", "alice",
            "@example.test", "@"]
    results = [await table.lookup(Service.ALIAS, k) for k in keys]
    assert results == [None, ExpandList(("alice",)), None, None, None, None]


async def test_alias_rows_are_joined(table):
    assert await table.lookup(Service.ALIAS, "team@example.test") == ExpandList(("alice", "bob"))


async def test_null_column_is_error(table, caplog):
    with caplog.at_level(logging.WARNING, logger="postillion.table"):
        with pytest.raises(LookupUnavailable):
            await table.lookup(Service.USERINFO, "broken")
    assert 'key="broken"' in caplog.text and "NULL" in caplog.text


async def test_unknown_key_error(tmp_path):
    make_demo_db(tmp_path / "tables.sqlite")
    with pytest.raises(TableError) as info:
        await open_conf(tmp_path, "query_domain SELECT name FROM domains WHERE name = ?\n"
                                  "# typo below\ndbpth tables.sqlite\n", name="users")
    assert str(info.value) == f'table users: sqlite: {tmp_path / "sqlite.conf"}:3: unknown key "dbpth"'


@pytest.mark.parametrize("line, error", [
    ("query_credentials SELECT hash FROM credentials WHERE name = ?",
     ":2: query_credentials returns 1 column, expected 2 (user, secret)"),
    ("query_userinfo SELECT uid, home FROM users WHERE name = ?",
     ":2: query_userinfo returns 2 columns, expected 3 (uid, gid, home)"),
    ("query_alias SELECT address, target FROM virtuals WHERE address = ?",
     ":2: query_alias returns 2 columns, expected 1 (alias)"),
    ("query_domain SELECT name FROM domain WHERE name = ?",
     ":2: query_domain: no such table: domain"),
    ("query_domain SELECT name FROM domains WHERE name = ? OR name = ?",
     ':2: query_domain must take one "?" (the key)'),
    ("query_domain SELECT name FROM domains",
     ':2: query_domain must take one "?" (the key)'),
    ("query_domain SELECT name FROM domains WHERE name = ?; DELETE FROM domains",
     ":2: query_domain: You can only execute one statement at a time."),
    ("query_domain DELETE FROM domains WHERE name = ?",
     ":2: query_domain: attempt to write a readonly database"),
])
async def test_queries_checked_at_open(tmp_path, line, error):
    make_demo_db(tmp_path / "tables.sqlite")
    with pytest.raises(TableError) as info:
        await open_conf(tmp_path, f"dbpath tables.sqlite\n{line}\n")
    assert str(info.value) == f"table t: sqlite: {tmp_path / 'sqlite.conf'}{error}"
    db = sqlite3.connect(tmp_path / "tables.sqlite")
    assert db.execute("SELECT count(*) FROM domains").fetchone() == (1,)


async def test_missing_database_is_not_created(tmp_path):
    with pytest.raises(TableError, match=r"sqlite.conf:1: .*absent.sqlite: unable to open"):
        await open_conf(tmp_path, "dbpath absent.sqlite\n"
                                  "query_domain SELECT 1 WHERE ? = 'x'\n")
    assert not (tmp_path / "absent.sqlite").exists()


@pytest.mark.parametrize("text, error", [
    ("query_domain SELECT 1 WHERE ? = 'x'\n", 'missing "dbpath"'),
    ("dbpath tables.sqlite\n", "no query_<service> and no fetch_source given"),
    ("dbpath tables.sqlite\ndbpath tables.sqlite\n", 'duplicate key "dbpath"'),
])
async def test_config_errors(tmp_path, text, error):
    make_demo_db(tmp_path / "tables.sqlite")
    with pytest.raises(TableError, match=error):
        await open_conf(tmp_path, text)


async def test_relative_dbpath_resolves_against_config_dir(tmp_path, monkeypatch):
    sub = tmp_path / "etc"
    sub.mkdir()
    make_demo_db(sub / "tables.sqlite")
    (sub / "sqlite.conf").write_text(DEMO_CONF)
    monkeypatch.chdir(tmp_path)
    t = open_table("demo", "sqlite", "etc/sqlite.conf")
    await t.open()
    try:
        assert await t.check(Service.DOMAIN, "example.test")
    finally:
        await t.close()


async def test_backend_down_is_error_then_recovers(table, demo, caplog):
    db = sqlite3.connect(demo.parent / "tables.sqlite")
    db.execute("ALTER TABLE users RENAME TO users_away")
    db.commit()
    with caplog.at_level(logging.WARNING, logger="postillion.table"):
        with pytest.raises(LookupUnavailable) as info:
            await table.lookup(Service.USERINFO, "alice")
    assert info.value.reply.code == 451
    assert "table=demo" in caplog.text and "service=userinfo" in caplog.text
    db.execute("ALTER TABLE users_away RENAME TO users")
    db.commit()
    db.close()
    assert await table.lookup(Service.USERINFO, "alice") == \
        Userinfo("alice", 1000, 1000, "/var/vmail/alice")


SLOW = ("query_domain WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c"
        " WHERE ?1 = 'slow') SELECT count(*) FROM c\n")


async def test_slow_query_times_out_without_blocking_the_loop(tmp_path):
    make_demo_db(tmp_path / "tables.sqlite")
    t = await open_conf(tmp_path, "dbpath tables.sqlite\n" + SLOW, timeout=0.3)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    with pytest.raises(LookupUnavailable, match="timed out after 0.3 s"):
        await t.check(Service.DOMAIN, "slow")
    elapsed = time.monotonic() - started
    task.cancel()
    assert elapsed < 2 and ticks >= 10        # the loop kept running meanwhile
    # the query was interrupted: the worker thread answers the next lookup at once
    started = time.monotonic()
    assert await t.check(Service.DOMAIN, "fast")
    assert time.monotonic() - started < 1
    await t.close()


async def test_update_switches_database(table, demo):
    other = demo.parent / "other.sqlite"
    db = sqlite3.connect(other)
    db.executescript("CREATE TABLE domains (name TEXT); INSERT INTO domains VALUES ('new.test');"
                     "CREATE TABLE virtuals (address, target); CREATE TABLE users (name, uid, gid, home);"
                     "CREATE TABLE credentials (name, hash);")
    db.commit()
    db.close()
    demo.write_text(DEMO_CONF.replace("tables.sqlite", "other.sqlite"))
    await table.update()
    assert await table.check(Service.DOMAIN, "new.test")
    assert not await table.check(Service.DOMAIN, "example.test")


async def test_broken_update_keeps_old_connection(table, demo):
    demo.write_text(DEMO_CONF.replace("query_alias SELECT target", "query_alias SELECT target, address"))
    with pytest.raises(TableError, match=r"sqlite.conf:3: query_alias returns 2 columns"):
        await table.update()
    assert await table.lookup(Service.ALIAS, "alice@example.test") == ExpandList(("alice",))


async def test_fetch_source_is_cyclic(tmp_path):
    db = sqlite3.connect(tmp_path / "s.sqlite")
    db.executescript("CREATE TABLE sources (ip TEXT);"
                     "INSERT INTO sources VALUES ('192.0.2.1'), ('192.0.2.2');")
    db.commit()
    t = await open_conf(tmp_path, "dbpath s.sqlite\nfetch_source SELECT ip FROM sources ORDER BY ip\n"
                                  "fetch_source_refresh 2\n")
    assert t.serves(Service.SOURCE)
    got = [await t.fetch(Service.SOURCE) for _ in range(2)]
    assert got == [Source(ipaddress.ip_address("192.0.2.1")), Source(ipaddress.ip_address("192.0.2.2"))]
    db.execute("DELETE FROM sources WHERE ip = '192.0.2.1'")
    db.commit()
    db.close()
    # re-read after fetch_source_refresh fetches
    assert await t.fetch(Service.SOURCE) == Source(ipaddress.ip_address("192.0.2.2"))
    await t.close()


async def test_closed_table_is_unavailable(table):
    await table.close()
    with pytest.raises(LookupUnavailable):
        await table.lookup(Service.DOMAIN, "example.test")


async def test_database_replaced_by_rename_is_seen(table, demo):
    """An administrator rebuilds the database aside and renames it over the old one."""
    aside = demo.parent / "tables.sqlite.new"
    make_demo_db(aside)
    db = sqlite3.connect(aside)
    db.execute("INSERT INTO domains VALUES ('renamed.test')")
    db.commit()
    db.close()
    assert not await table.check(Service.DOMAIN, "renamed.test")
    aside.rename(demo.parent / "tables.sqlite")
    assert await table.check(Service.DOMAIN, "renamed.test")


async def test_database_emptied_then_restored_recovers(table, demo):
    """SQLite's schema cache must not keep a 451 after the file is back."""
    path = demo.parent / "tables.sqlite"
    saved = path.read_bytes()
    with open(path, "r+b") as f:
        f.truncate(0)
    with pytest.raises(LookupUnavailable):
        await table.check(Service.DOMAIN, "example.test")
    with open(path, "r+b") as f:
        f.write(saved)
    assert await table.check(Service.DOMAIN, "example.test")
