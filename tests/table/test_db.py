"""`db:` tables: SQLite maps built by makemap, reopened when replaced."""

from __future__ import annotations

import logging
import os
import sqlite3

import pytest

from postillion.errors import LookupUnavailable
from postillion.table import ExpandList, Service, Shape, TableError, open_table
from postillion.table.backends.db import DbBackend
from postillion.table.dbfile import Entry, parse_source, read_map, sniff, write_map

BERKELEY_185_HASH = b"\x61\x15\x06\x00" + b"\x00" * 508          # OpenBSD makemap
BERKELEY_4_BTREE = b"\x00" * 12 + b"\x62\x31\x05\x00" + b"\x00" * 496


def build(path, text, kind="map"):
    entries = parse_source(text, str(path) + ".txt", kind)
    return write_map(entries, str(path), kind, str(path) + ".txt")


async def opened(path, name="aliases"):
    table = open_table(name, "db", str(path))
    await table.open()
    return table


async def test_lookup_and_shape(tmp_path):
    db = tmp_path / "aliases.db"
    assert build(db, "# aliases\nRoot: alice, bob\npostmaster alice\n") == 2
    t = await opened(db)
    assert t.backend_name == "db" and t.shape is Shape.MAP
    assert await t.lookup(Service.ALIAS, "ROOT") == ExpandList(("alice", "bob"))
    assert await t.check(Service.ALIAS, "postmaster")
    assert await t.lookup(Service.ALIAS, "nobody") is None
    assert not t.serves(Service.SOURCE)
    await t.close()


async def test_set_is_a_list_matched_by_the_table(tmp_path):
    db = tmp_path / "domains.db"
    build(db, "example.org\n*.Example.NET\n", "set")
    t = await opened(db, "domains")
    assert t.shape is Shape.LIST
    assert await t.check(Service.DOMAIN, "mx.example.net")
    assert not await t.check(Service.DOMAIN, "example.net")
    assert not t.serves(Service.USERINFO)
    assert read_map(str(db)) == ("set", [("example.org", "example.org"),
                                         ("*.example.net", "*.Example.NET")])
    await t.close()


async def test_replaced_map_is_seen_on_the_next_lookup(tmp_path):
    db = tmp_path / "aliases.db"
    build(db, "root alice\n")
    t = await opened(db)
    assert await t.lookup(Service.ALIAS, "root") == ExpandList(("alice",))
    build(db, "root bob\n")                  # write aside, rename: a new inode
    assert await t.lookup(Service.ALIAS, "root") == ExpandList(("bob",))
    await t.close()


async def test_replacement_that_does_not_open_keeps_old_and_warns_once(tmp_path, caplog):
    db = tmp_path / "aliases.db"
    build(db, "root alice\n")
    t = await opened(db)
    aside = tmp_path / "aside"
    aside.write_text("root carol\n")          # a text file renamed over the map
    aside.replace(db)
    with caplog.at_level(logging.WARNING, logger="postillion.table"):
        for _ in range(3):
            assert await t.lookup(Service.ALIAS, "root") == ExpandList(("alice",))
    assert len([r for r in caplog.records if "reopen failed" in r.getMessage()]) == 1
    with pytest.raises(TableError, match="not a map built by `postillion makemap`"):
        await t.update()
    build(db, "root dave\n")
    assert await t.lookup(Service.ALIAS, "root") == ExpandList(("dave",))
    await t.close()


@pytest.mark.parametrize("data", [BERKELEY_185_HASH, BERKELEY_4_BTREE])
async def test_berkeley_db_says_rebuild(tmp_path, data):
    db = tmp_path / "aliases.db"
    db.write_bytes(data)
    assert sniff(str(db)) == "berkeley"
    t = open_table("aliases", "db", str(db))
    with pytest.raises(TableError) as info:
        await t.open()
    assert str(info.value) == (
        f"table aliases: db: {db} is a Berkeley DB file (OpenSMTPD's makemap); Postillion"
        f" reads maps built by its own makemap: rebuild it with `postillion makemap"
        f" {tmp_path / 'aliases'}` (or `postillion newaliases` for aliases)")
    await t.close()


@pytest.mark.parametrize("content, error", [
    (b"", "empty file"),
    (b"root alice\n", "unknown format"),
    (None, "No such file"),
])
async def test_not_a_map(tmp_path, content, error):
    db = tmp_path / "x.db"
    if content is not None:
        db.write_bytes(content)
    t = open_table("x", "db", str(db))
    with pytest.raises(TableError, match=error):
        await t.open()
    await t.close()


async def test_sqlite_file_without_map_table(tmp_path):
    db = tmp_path / "x.db"
    sqlite3.connect(db).execute("CREATE TABLE other (a)").connection.close()
    t = open_table("x", "db", str(db))
    with pytest.raises(TableError, match="no such table: map"):
        await t.open()
    await t.close()


async def test_hand_built_map_without_meta(tmp_path):
    db = tmp_path / "x.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE map (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO map VALUES ('root', 'alice')")
    conn.commit()
    conn.close()
    t = await opened(db)
    assert await t.lookup(Service.ALIAS, "Root") == ExpandList(("alice",))
    await t.close()


async def test_shape_is_kept(tmp_path):
    db = tmp_path / "x.db"
    build(db, "root alice\n")
    t = await opened(db)
    build(db, "example.org\n", "set")
    with pytest.raises(TableError, match="is now a list but was a map"):
        await t.update()
    assert await t.lookup(Service.ALIAS, "root") == ExpandList(("alice",))
    await t.close()


async def test_malformed_value_is_error_at_lookup(tmp_path, caplog):
    db = tmp_path / "users.db"
    build(db, "alice 1000:1000:/home/alice\nbob 1000:/home/bob\n")
    t = await opened(db, "users")
    await t.verify(Service.USERINFO)        # maps are checked per lookup
    with pytest.raises(LookupUnavailable):
        await t.lookup(Service.USERINFO, "bob")
    assert '"bob"' in caplog.text and "/home/bob" not in caplog.text
    await t.close()


async def test_verified_set_refuses_a_bad_replacement(tmp_path):
    db = tmp_path / "nets.db"
    build(db, "192.0.2.0/24\n", "set")
    t = await opened(db, "nets")
    await t.verify(Service.NETADDR)
    build(db, "192.0.2.0/24\n10.0.0.0/33\n", "set")
    with pytest.raises(TableError, match=r'list element 2 "10.0.0.0/33" is not a valid netaddr'):
        await t.update()
    assert await t.check(Service.NETADDR, "192.0.2.7")
    await t.close()


def test_declaration_errors():
    with pytest.raises(TableError, match="a db table needs a path"):
        open_table("x", "db", None)
    assert DbBackend.name == "db"


@pytest.mark.parametrize("text, kind, error", [
    ("root alice\nbob\n", "map", r"src:2: key \"bob\" has no value"),
    ("root alice\n\nRoot bob\n", "map", r'src:3: duplicate key "root" \(first on line 1\)'),
    ("a.org\nA.ORG\n", "set", r'src:2: duplicate key "a.org" \(first on line 1\)'),
    ("root alice, al!ce\n", "aliases", r'src:1: key "root": malformed alias value: target 2'),
    ("x |\n", "aliases", "without a command"),
])
def test_parse_source_errors(text, kind, error):
    with pytest.raises(Exception, match=error):
        parse_source(text, "src", kind)


def test_write_is_atomic_and_keeps_source_mode(tmp_path):
    out = tmp_path / "creds.db"
    write_map([Entry("alice", "alice:secret", 1)], str(out), "map", "creds", mode=0o600)
    assert os.stat(out).st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["creds.db"]     # no temp file left
    assert read_map(str(out)) == ("map", [("alice", "alice:secret")])


async def test_deleted_map_keeps_serving_and_warns_once(tmp_path, caplog):
    db = tmp_path / "aliases.db"
    build(db, "root alice\n")
    t = await opened(db)
    db.unlink()
    with caplog.at_level(logging.WARNING, logger="postillion.table"):
        for _ in range(3):
            assert await t.lookup(Service.ALIAS, "root") == ExpandList(("alice",))
    assert len([r for r in caplog.records if "gone" in r.getMessage()]) == 1
    with pytest.raises(TableError, match="No such file"):
        await t.update()
    await t.close()
