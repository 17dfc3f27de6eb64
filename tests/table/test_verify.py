"""Load-time checks of static and file tables, alias targets, render and dump."""

from __future__ import annotations

import ipaddress
import os

import pytest

from postillion.table import (
    Credentials, ExpandList, Mailaddr, Mailaddrmap, Netaddr, Relayhost, Service, Source,
    TableError, Userinfo, open_table, parse_value,
)
from postillion.table.values import BadValue, Domain, String, check_target, render


async def opened(*args, **kwargs):
    table = open_table(*args, **kwargs)
    await table.open()
    return table


async def test_static_map_checked_for_its_use():
    t = await opened("users", "static", None, is_map=True,
                     pairs=(("alice", "1000:1000:/home/alice"), ("bob", "1001:/home/bob")))
    with pytest.raises(TableError) as info:
        await t.verify(Service.USERINFO)
    text = str(info.value)
    assert text.startswith('table users: static: key "bob": malformed userinfo value: ')
    assert "/home/bob" not in text
    await t.verify(Service.STRING)         # the same values are fine as strings


async def test_file_map_error_names_file_line_and_key(tmp_path):
    path = tmp_path / "users"
    path.write_text("# users\nalice 1000:1000:/home/alice\n\nBob secret-ish:/home/bob\n")
    t = await opened("users", "file", str(path))
    with pytest.raises(TableError) as info:
        await t.verify(Service.USERINFO)
    assert str(info.value).startswith(
        f'table users: file: {path}:4: key "bob": malformed userinfo value: ')
    assert "secret-ish" not in str(info.value)


async def test_file_list_error_names_element(tmp_path):
    path = tmp_path / "nets"
    path.write_text("# @list\n192.0.2.0/24\n10.0.0.0/33\n")
    t = await opened("nets", "file", str(path))
    with pytest.raises(TableError, match=rf'{path}:3: list element 2 "10.0.0.0/33" is not a'
                                         r" valid netaddr"):
        await t.verify(Service.NETADDR)


async def test_verified_file_refuses_bad_reload(tmp_path):
    path = tmp_path / "aliases"
    path.write_text("root alice\n")
    t = await opened("aliases", "file", str(path))
    await t.verify(Service.ALIAS)
    path.write_text("root alice\npipe |\n")
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))
    with pytest.raises(TableError, match=rf'{path}:2: key "pipe": malformed alias value: target 1'):
        await t.update()
    assert await t.lookup(Service.ALIAS, "root") == ExpandList(("alice",))
    assert await t.lookup(Service.ALIAS, "pipe") is None


@pytest.mark.parametrize("target", [
    "alice", "alice.smith", "a_b-c+tag", "alice@example.org", "|/usr/bin/vacation -a x",
    "/var/mail/alice", "/home/alice/Maildir/", ":include:/etc/mail/list",
    "error:550 no such list", ":error:451 try later", "ERROR:550 gone",
])
def test_valid_targets(target):
    check_target(target)


@pytest.mark.parametrize("target, reason", [
    ("alice smith", "not a user"),
    ("al!ce", "not a user"),
    ("alice@", "not a valid address"),
    ("@example.org", "not a valid address"),
    ("|", "without a command"),
    (":include:relative", "absolute path"),
    ("error:250 ok", "4xx or 5xx"),
    ("error:", "4xx or 5xx"),
    ("bell\x07", "control characters"),
])
def test_invalid_targets(target, reason):
    with pytest.raises(BadValue, match=reason):
        check_target(target)


@pytest.mark.parametrize("service, raw", [
    (Service.ALIAS, 'alice, "|/bin/cmd \\"a, b\\"", /var/mail/x, b\\\\c@example.org'),
    (Service.USERINFO, "alice:1000:1000:/home/alice"),
    (Service.CREDENTIALS, "alice:$2b$12$xyz"),
    (Service.NETADDR, "2001:db8::/32"),
    (Service.SOURCE, "192.0.2.1"),
    (Service.MAILADDR, "user@*.example.org"),
    (Service.MAILADDRMAP, "alice@example.org, @example.net"),
    (Service.DOMAIN, "example.org"),
    (Service.ADDRNAME, "mx.example.org"),
    (Service.RELAYHOST, "smtp+tls://label@mx.example.org:587"),
    (Service.STRING, "any thing"),
    (Service.REGEX, r"(?i)relay-\d+"),
])
def test_render_round_trips(service, raw):
    value = parse_value(service, "alice", raw)
    assert parse_value(service, "alice", render(value)) == value or service is Service.REGEX
    if service is Service.REGEX:
        assert render(value) == raw


def test_render_forms():
    assert render(ExpandList(("a", "|cmd x,y"))) == 'a, "|cmd x,y"'
    assert render(Userinfo("bob", 1, 2, "/h")) == "bob:1:2:/h"
    assert render(Credentials("bob", "s")) == "bob:s"
    assert render(Netaddr(ipaddress.ip_network("192.0.2.0/24"))) == "192.0.2.0/24"
    assert render(Netaddr("local")) == "local"
    assert render(Source(ipaddress.ip_address("::1"))) == "::1"
    assert render(Mailaddrmap((Mailaddr("a", "b"), Mailaddr("", "")))) == "a@b, @"
    assert render(Relayhost("smtp://x")) == "smtp://x"
    assert render(Domain("x.org")) == "x.org"


async def test_dump_map_and_list(tmp_path):
    m = await opened("users", "static", None, is_map=True,
                     pairs=(("Bob", "1:1:/b"), ("alice", "2:2:/a")))
    assert await m.dump(Service.USERINFO) == [("bob", Userinfo("bob", 1, 1, "/b")),
                                              ("alice", Userinfo("alice", 2, 2, "/a"))]
    path = tmp_path / "nets"
    path.write_text("# @list\n192.0.2.0/24\nlocal\n")
    lst = await opened("nets", "file", str(path))
    assert [v for _, v in await lst.dump(Service.NETADDR)] == [
        Netaddr(ipaddress.ip_network("192.0.2.0/24")), Netaddr("local")]
    with pytest.raises(TableError, match='key "bob": malformed alias'):
        bad = await opened("a", "static", None, is_map=True, pairs=(("bob", "x y"),))
        await bad.dump(Service.ALIAS)


async def test_dump_refused_where_backend_cannot_list():
    t = await opened("<getpwnam>", "getpwnam", None)
    with pytest.raises(TableError, match="cannot list"):
        await t.dump(Service.USERINFO)


async def test_map_used_to_match_is_not_checked_for_values(tmp_path):
    path = tmp_path / "domains"
    path.write_text("example.org   our main domain\nexample.net   # the other one\n")
    t = await opened("domains", "file", str(path))
    await t.verify(Service.DOMAIN)          # "key exists": the values are never read
    await t.verify(Service.NETADDR)
    assert await t.check(Service.DOMAIN, "EXAMPLE.org")
    assert not await t.check(Service.DOMAIN, "example.com")
    assert await t.dump(Service.DOMAIN) == [("example.org", String("our main domain")),
                                            ("example.net", String("# the other one"))]
