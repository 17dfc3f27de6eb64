"""`file:` tables: loading, errors with file:line, reload on change."""

from __future__ import annotations

import ipaddress
import logging
import os

import pytest

from postillion.table import ExpandList, Service, Shape, Source, TableError, open_table
from postillion.table.backends.file import FileBackend


@pytest.fixture
def instant_stat(monkeypatch):
    """Check the file's mtime on every lookup instead of once a second."""
    monkeypatch.setattr(FileBackend, "STAT_INTERVAL", 0.0)


def touch_later(path, seconds=10):
    """Move mtime on, so a rewrite within the same clock tick is still seen."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


async def opened(path, name="aliases"):
    table = open_table(name, "file", str(path))
    await table.open()
    return table


async def test_open_missing_file(tmp_path):
    table = open_table("aliases", "file", str(tmp_path / "absent"))
    with pytest.raises(TableError) as info:
        await table.open()
    assert str(info.value) == f"table aliases: file: {tmp_path / 'absent'}: No such file or directory"


async def test_open_error_names_file_and_line(tmp_path):
    path = tmp_path / "aliases"
    path.write_text("# aliases\nroot alice\n\nbob\n")
    with pytest.raises(TableError) as info:
        await opened(path)
    assert str(info.value) == f'table aliases: file: {path}:4: key "bob" has no value'


async def test_not_utf8_names_line(tmp_path):
    path = tmp_path / "aliases"
    path.write_bytes(b"root alice\nbob caf\xe9\n")
    with pytest.raises(TableError, match=rf"{path}:2: not UTF-8 text"):
        await opened(path)


async def test_path_without_backend_name_and_static_path(tmp_path):
    path = tmp_path / "aliases"
    path.write_text("root alice\n")
    table = open_table("aliases", "static", str(path))     # OpenSMTPD's static:/path
    await table.open()
    assert table.backend_name == "file"
    assert await table.lookup(Service.ALIAS, "root") == ExpandList(("alice",))


async def test_reload_on_mtime_change(tmp_path, instant_stat):
    path = tmp_path / "aliases"
    path.write_text("root alice\n")
    table = await opened(path)
    path.write_text("root bob\n")
    touch_later(path)
    assert await table.lookup(Service.ALIAS, "root") == ExpandList(("bob",))


async def test_reload_by_rename(tmp_path, instant_stat):
    path = tmp_path / "aliases"
    path.write_text("root alice\n")
    table = await opened(path)
    new = tmp_path / "aliases.new"
    new.write_text("root carol\n")
    os.replace(new, path)                                  # new inode, as editors do
    assert await table.lookup(Service.ALIAS, "root") == ExpandList(("carol",))


async def test_no_reload_before_interval(tmp_path, monkeypatch):
    monkeypatch.setattr(FileBackend, "STAT_INTERVAL", 3600.0)
    path = tmp_path / "aliases"
    path.write_text("root alice\n")
    table = await opened(path)
    path.write_text("root bob\n")
    touch_later(path)
    assert await table.lookup(Service.ALIAS, "root") == ExpandList(("alice",))
    await table.update()                                    # `update table` forces it
    assert await table.lookup(Service.ALIAS, "root") == ExpandList(("bob",))


async def test_broken_file_on_mtime_keeps_old_and_warns_once(tmp_path, instant_stat, caplog):
    path = tmp_path / "aliases"
    path.write_text("root alice\n")
    table = await opened(path)
    path.write_text("root alice\nbroken\n")
    touch_later(path)
    with caplog.at_level(logging.WARNING, logger="postillion.table"):
        for _ in range(3):
            assert await table.lookup(Service.ALIAS, "root") == ExpandList(("alice",))
    warnings = [r for r in caplog.records if "reload failed" in r.getMessage()]
    assert len(warnings) == 1 and f"{path}:2" in warnings[0].getMessage()
    path.write_text("root dave\n")                          # fixed: picked up again
    touch_later(path, 20)
    assert await table.lookup(Service.ALIAS, "root") == ExpandList(("dave",))


async def test_deleted_file_keeps_old_contents(tmp_path, instant_stat):
    path = tmp_path / "aliases"
    path.write_text("root alice\n")
    table = await opened(path)
    path.unlink()
    assert await table.lookup(Service.ALIAS, "root") == ExpandList(("alice",))
    with pytest.raises(TableError, match="No such file"):
        await table.update()
    assert await table.lookup(Service.ALIAS, "root") == ExpandList(("alice",))


async def test_shape_is_kept(tmp_path):
    path = tmp_path / "aliases"
    path.write_text("root alice\n")
    table = await opened(path)
    assert table.shape is Shape.MAP
    path.write_text("example.org\n")
    with pytest.raises(TableError, match="is now a list but was a map"):
        await table.update()
    assert await table.lookup(Service.ALIAS, "root") == ExpandList(("alice",))


async def test_emptied_list_stays_a_list(tmp_path):
    path = tmp_path / "nets"
    path.write_text("# @list\n192.0.2.0/24\n")
    table = await opened(path, "nets")
    assert await table.check(Service.NETADDR, "192.0.2.1")
    path.write_text("# nothing blocked for now\n")
    await table.update()
    assert table.shape is Shape.LIST
    assert not await table.check(Service.NETADDR, "192.0.2.1")


async def test_list_cannot_serve_userinfo(tmp_path):
    path = tmp_path / "domains"
    path.write_text("example.org\n")
    table = await opened(path, "domains")
    table.require(Service.DOMAIN)
    with pytest.raises(TableError,
                       match=r"table domains \(backend file\) is a list and cannot serve service userinfo"):
        table.require(Service.USERINFO)
    with pytest.raises(TableError):
        await table.lookup(Service.USERINFO, "alice")


async def test_fetch_is_cyclic(tmp_path):
    path = tmp_path / "sources"
    path.write_text("# @list\n192.0.2.1\n2001:db8::1\n")
    table = await opened(path, "sources")
    got = [await table.fetch(Service.SOURCE) for _ in range(3)]
    assert got == [Source(ipaddress.ip_address(a)) for a in ("192.0.2.1", "2001:db8::1", "192.0.2.1")]


async def test_empty_list_fetches_nothing(tmp_path):
    path = tmp_path / "sources"
    path.write_text("# @list\n")
    table = await opened(path, "sources")
    assert await table.fetch(Service.SOURCE) is None
