"""The text format (docs/tables.md), for file tables and backend-config files."""

from __future__ import annotations

import pytest

from postillion.table import BackendError, Shape
from postillion.table.backend_config import parse_backend_config, read_backend_config
from postillion.table.textformat import parse_table_text, split_map_line


@pytest.mark.parametrize("line, key, value", [
    ("root: gilles", "root", "gilles"),
    ("root gilles", "root", "gilles"),
    ("root\tgilles", "root", "gilles"),
    ("root : gilles", "root", "gilles"),
    ("root:gilles", "root", "gilles"),
    ("vmail:2000:2000:/var/vmail", "vmail", "2000:2000:/var/vmail"),
    ("root:   alice, bob", "root", "alice, bob"),
    ("host ::1", "host", "::1"),
    ("key", "key", ""),
    ("key:", "key", ""),
])
def test_split_map_line(line, key, value):
    assert split_map_line(line) == (key, value)


def test_map_with_comments_blanks_and_continuation():
    contents = parse_table_text(
        "# aliases\n"
        "\n"
        "   Root: alice, \\\n"
        "         bob\n"
        "list   a#b, c  \n"
        "  # indented comment\n", "aliases")
    assert contents.shape is Shape.MAP
    assert dict(contents.mapping) == {"root": "alice,          bob", "list": "a#b, c"}


def test_first_data_line_decides_list():
    contents = parse_table_text("# domains\nexample.org\n*.example.net\n", "d")
    assert contents.shape is Shape.LIST
    assert contents.elements == ("example.org", "*.example.net")


def test_list_directive_for_ipv6():
    without = parse_table_text("2001:db8::/32\n", "n")
    assert without.shape is Shape.MAP      # "2001" is taken as a key: hence # @list
    assert dict(without.mapping) == {"2001": "db8::/32"}
    contents = parse_table_text("# @list\n2001:db8::/32\n192.0.2.0/24\n", "n")
    assert contents.shape is Shape.LIST
    assert contents.elements == ("2001:db8::/32", "192.0.2.0/24")


def test_list_directive_after_first_data_line_is_a_comment():
    contents = parse_table_text("a b\n# @list\nc d\n", "m")
    assert contents.shape is Shape.MAP and dict(contents.mapping) == {"a": "b", "c": "d"}


def test_empty_file_is_an_undecided_map():
    for text in ("", "\n\n", "# only comments\n"):
        contents = parse_table_text(text, "e")
        assert contents.shape is Shape.MAP and not contents.decided and not contents.mapping


def test_escaped_backslash_does_not_continue():
    contents = parse_table_text("a b\\\\\nc d\n", "m")
    assert dict(contents.mapping) == {"a": "b\\\\", "c": "d"}


@pytest.mark.parametrize("text, error", [
    ("root alice\nbob\n", 'aliases:2: key "bob" has no value'),
    ("root alice\nRoot bob\n", 'aliases:2: duplicate key "root" (first on line 1)'),
    ("root alice\n: x\n", "aliases:2: line starts with a separator"),
    ("root alice\nbob carol \\\n", "aliases:2: line continued with \\ at end of file"),
])
def test_errors_name_file_and_line(text, error):
    with pytest.raises(BackendError) as info:
        parse_table_text(text, "aliases")
    assert str(info.value).startswith(error)


KNOWN = {"dbpath", "query_alias", "query_domain"}


def test_backend_config():
    cfg = parse_backend_config(
        "# sqlite\n"
        "dbpath /var/db/tables.sqlite\n"
        "query_alias SELECT target FROM virtuals \\\n"
        "            WHERE address = ?\n", "s.conf", KNOWN)
    assert cfg.get("dbpath") == "/var/db/tables.sqlite"
    assert cfg.get("query_alias") == "SELECT target FROM virtuals             WHERE address = ?"
    assert cfg.where("query_alias") == "s.conf:3"
    assert cfg.get("query_domain") is None


@pytest.mark.parametrize("text, error", [
    ("dbpath x\ndbpth y\n", 's.conf:2: unknown key "dbpth"'),
    ("dbpath x\n\ndbpath y\n", 's.conf:3: duplicate key "dbpath" (first on line 1)'),
    ("dbpath\n", 's.conf:1: key "dbpath" has no value'),
    ("DBPATH x\n", 's.conf:1: unknown key "DBPATH"'),
])
def test_backend_config_errors(text, error):
    with pytest.raises(BackendError) as info:
        parse_backend_config(text, "s.conf", KNOWN)
    assert str(info.value) == error


def test_backend_config_paths_and_numbers(tmp_path):
    conf = tmp_path / "sub" / "s.conf"
    conf.parent.mkdir()
    conf.write_text("dbpath tables.sqlite\nquery_alias 12x\n")
    cfg = read_backend_config(str(conf), KNOWN)
    assert cfg.resolve_path("dbpath") == str(tmp_path / "sub" / "tables.sqlite")
    assert cfg.integer("query_domain", 60) == 60
    with pytest.raises(BackendError, match=r"s.conf:2: \"query_alias\" wants a number"):
        cfg.integer("query_alias", 1)
    with pytest.raises(BackendError, match='missing "query_domain"'):
        cfg.require("query_domain")
    with pytest.raises(BackendError, match="No such file"):
        read_backend_config(str(tmp_path / "absent.conf"), KNOWN)
