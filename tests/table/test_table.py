"""`open_table`, the registry, static tables and the Table's own rules."""

from __future__ import annotations

import pwd

import pytest

from postillion.errors import LookupUnavailable, TempFail
from postillion.table import (
    ALIASES, BACKEND_NAMES, ExpandList, Service, Shape, TableError, Userinfo, open_table,
)
from postillion.table.table import fold_key


def test_registry_names_are_unique_and_aliases_resolve():
    names = list(BACKEND_NAMES)
    assert len(names) == len(set(names))
    assert {"static", "file", "sqlite", "getpwnam", "postgres", "ldap"} <= set(names)
    assert set(ALIASES.values()) <= set(names)


def test_networked_backends_load_on_first_use_under_their_own_name():
    """The daemon's processes import no client library a table does not use."""
    import subprocess
    import sys
    code = ("import sys; import postillion.daemon.roles; "
            "print(sorted(m for m in ('asyncpg', 'aiomysql', 'redis', 'ldap3') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    from postillion.table.registry import NETWORKED, backend_class
    for name in NETWORKED:
        assert backend_class("t", name, "/x").name == name


def test_unknown_backend_is_config_error():
    with pytest.raises(TableError) as info:
        open_table("users", "postgress", "/etc/pg.conf")
    assert str(info.value).startswith('table users: unknown backend "postgress" (known: ')


@pytest.mark.parametrize("kwargs, error", [
    (dict(backend="static", config=None, pairs=(("Alice", "a"), ("alice", "b")), is_map=True),
     'table t: static: duplicate key "alice"'),
    (dict(backend="static", config=None, items=("a",), pairs=(("k", "v"),)),
     "not both"),
    (dict(backend="file", config=None), "table t: file: a file table needs a path"),
    (dict(backend="sqlite", config=None), "backend-config file"),
    (dict(backend="getpwnam", config="x"), "takes no configuration"),
])
def test_declarations_that_do_not_suit_the_backend(kwargs, error):
    with pytest.raises(TableError, match=error):
        open_table("t", **kwargs)


async def test_static_map_and_list():
    m = open_table("aliases", "static", None, pairs=(("Root", "alice, bob"),), is_map=True)
    await m.open()
    assert m.shape is Shape.MAP
    assert await m.lookup(Service.ALIAS, "ROOT") == ExpandList(("alice", "bob"))
    empty_map = open_table("e", "static", None, is_map=True)
    assert empty_map.shape is Shape.MAP and empty_map.serves(Service.USERINFO)
    lst = open_table("nets", "static", None, items=("10.0.0.0/8",))
    assert lst.shape is Shape.LIST
    assert await lst.check(Service.NETADDR, "10.1.2.3")
    await lst.update()                              # nothing to reload, no error
    assert await lst.check(Service.NETADDR, "10.1.2.3")


async def test_list_cannot_be_a_userbase():
    lst = open_table("users", "static", None, items=("alice",))
    with pytest.raises(TableError, match=r"table users \(backend static\) is a list and cannot serve"
                                         r" service userinfo"):
        lst.require(Service.USERINFO)


async def test_getpwnam_root():
    t = open_table("<getpwnam>", "getpwnam", None)
    await t.open()
    root = pwd.getpwuid(0)
    assert await t.lookup(Service.USERINFO, root.pw_name.upper()) == \
        Userinfo(root.pw_name, 0, root.pw_gid, root.pw_dir)
    assert await t.lookup(Service.USERINFO, "no-such-user-postillion") is None
    assert await t.lookup(Service.USERINFO, "root\x00") is None
    assert not t.serves(Service.ALIAS)


def test_auth_keys_keep_their_password_case():
    assert fold_key(Service.AUTH, "Alice:PassWord") == "alice:PassWord"
    assert fold_key(Service.USERINFO, "Alice:X") == "alice:x"


async def test_lookup_unavailable_is_a_tempfail():
    t = open_table("nets", "static", None, items=("not a network",))
    with pytest.raises(LookupUnavailable) as info:
        await t.check(Service.NETADDR, "192.0.2.1")
    assert isinstance(info.value, TempFail)
    assert str(info.value.reply) == "451 4.3.0 Temporary failure"
    assert "table nets" in info.value.reason and "element 1" in info.value.reason


async def test_regex_list_matches_key_as_given():
    t = open_table("tags", "static", None, items=(r"Relay-\d+", "(?i)inbound"))
    assert await t.check(Service.REGEX, "Relay-7")
    assert not await t.check(Service.REGEX, "relay-7")
    assert await t.check(Service.REGEX, "INBOUND")


async def test_file_and_static_give_same_answers(tmp_path):
    path = tmp_path / "users"
    path.write_text("Alice 1:1:/home/alice\n")
    f = open_table("users", "file", str(path))
    await f.open()
    s = open_table("users", "static", None, pairs=(("Alice", "1:1:/home/alice"),), is_map=True)
    for key in ("alice", "ALICE", "bob"):
        assert await f.lookup(Service.USERINFO, key) == await s.lookup(Service.USERINFO, key)

