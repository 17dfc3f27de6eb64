"""List matching rules (docs/tables.md, Lists and maps), as pure functions."""

from __future__ import annotations

import pytest

from postillion.table import Mailaddr, Service
from postillion.table.match import compile_element, domain_match, mailaddr_match


@pytest.mark.parametrize("pattern, key, expected", [
    ("example.org", "example.org", True),
    ("example.org", "EXAMPLE.ORG", True),
    ("Example.Org", "example.org", True),
    ("example.org", "mx.example.org", False),
    ("example.org", "example.org.evil", False),
    ("*.example.org", "mx.example.org", True),
    ("*.example.org", "example.org", False),
    ("*.example.org", "a.b.example.org", False),      # `*` skips to the first `.` only
    ("*", "anything.example", True),
    ("*", "", True),
    ("mx*", "mx1.example.org", True),                 # trailing `*` eats the rest
    ("mx*", "m", False),
    ("*.*.org", "a.b.org", True),
    ("**.org", "a.org", True),
    ("a*c", "abbc", True),
    ("a*c", "abcbc", False),                          # whole key consumed, no backtracking
    ("*.example.org", "", False),
])
def test_domain_match(pattern, key, expected):
    assert domain_match(pattern, key) is expected


@pytest.mark.parametrize("element, key, expected", [
    (Mailaddr("", ""), "anyone@anywhere", True),
    (Mailaddr("alice", "example.org"), "alice@example.org", True),
    (Mailaddr("alice", "example.org"), "ALICE@Example.ORG", True),
    (Mailaddr("alice", "example.org"), "alice+lists@example.org", True),
    (Mailaddr("alice+lists", "example.org"), "alice+lists@example.org", True),
    (Mailaddr("alice+lists", "example.org"), "alice@example.org", False),
    (Mailaddr("alice+lists", "example.org"), "alice+other@example.org", False),
    (Mailaddr("alice", "example.org"), "bob@example.org", False),
    (Mailaddr("alice", "example.org"), "alice@example.com", False),
    (Mailaddr("", "example.org"), "bob@example.org", True),
    (Mailaddr("", "*.example.org"), "bob@mx.example.org", True),
    (Mailaddr("", "*.example.org"), "bob@example.org", False),
    (Mailaddr("bob", ""), "bob@any.test", True),
    (Mailaddr("bob", ""), "bob", True),
])
def test_mailaddr_match(element, key, expected):
    assert mailaddr_match(element, key) is expected


def test_mailaddr_match_other_delimiter():
    assert mailaddr_match(Mailaddr("alice", "x.test"), "alice-tag@x.test", delim="-")
    assert not mailaddr_match(Mailaddr("alice", "x.test"), "alice+tag@x.test", delim="-")


def test_regex_is_full_match_on_key_as_given():
    rx = compile_element(Service.REGEX, r"tag-\d+")
    assert rx("tag-12") and not rx("xtag-12") and not rx("tag-12x") and not rx("TAG-12")
    blind = compile_element(Service.REGEX, r"(?i)tag-\d+")
    assert blind("TAG-12")


def test_string_is_case_blind_equality():
    s = compile_element(Service.STRING, "Relayed")
    assert s("relayed") and s("RELAYED") and not s("relay")
