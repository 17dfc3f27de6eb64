"""The DNS layer's pure parts: the TTL cache, ordering, backup filtering, literals."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest

from postillion.errors import PermFail
from postillion.mta.dns import (
    INVALID_DOMAIN,
    DnsSettings,
    MxHost,
    address_literal,
    backup_filter,
    canonical,
    order,
)
from postillion.mta.dnscache import Answer, TtlCache

MTA = Path(__file__).resolve().parents[2] / "src" / "postillion" / "mta"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_cache_entries_expire_after_their_own_ttl():
    clock = Clock()
    cache = TtlCache(10, clock)
    cache.put("a", Answer(("192.0.2.1",)), 5)
    cache.put("b", Answer((), nxdomain=True), 1)
    clock.now = 0.99
    assert cache.get("a") == Answer(("192.0.2.1",)) and cache.get("b").nxdomain
    clock.now = 1.0
    assert cache.get("b") is None and cache.get("a") is not None
    clock.now = 5.0
    assert cache.get("a") is None
    assert len(cache) == 0


def test_cache_keeps_nothing_for_a_ttl_of_zero_and_replaces_on_put():
    cache = TtlCache(10, Clock())
    cache.put("a", Answer(("x",)), 0)
    assert cache.get("a") is None
    cache.put("a", Answer(("x",)), 10)
    cache.put("a", Answer(("y",)), 10)
    assert cache.get("a") == Answer(("y",))
    cache.put("a", Answer(("z",)), 0)                   # a TTL 0 answer replaces, is not kept
    assert cache.get("a") is None


def test_cache_is_bounded_least_recently_used_first_out():
    cache = TtlCache(3, Clock())
    for key in "abc":
        cache.put(key, Answer((key,)), 60)
    assert cache.get("a") is not None                   # a is now the most recent
    cache.put("d", Answer(("d",)), 60)
    assert len(cache) == 3
    assert cache.get("b") is None
    assert [k for k in "acd" if cache.get(k)] == ["a", "c", "d"]
    cache.clear()
    assert len(cache) == 0


def test_cache_of_size_zero_keeps_nothing():
    cache = TtlCache(0, Clock())
    cache.put("a", Answer(("x",)), 60)
    assert cache.get("a") is None
    with pytest.raises(ValueError):
        TtlCache(-1)


def test_order_sorts_by_preference_and_shuffles_equals():
    hosts = [MxHost(20, "b"), MxHost(10, "a"), MxHost(20, "c"), MxHost(30, "d"), MxHost(20, "e")]
    seen = set()
    for seed in range(40):
        ordered = order(hosts, random.Random(seed))
        assert [h.preference for h in ordered] == [10, 20, 20, 20, 30]
        assert ordered[0].name == "a" and ordered[-1].name == "d"
        seen.add(tuple(h.name for h in ordered[1:4]))
    assert len(seen) == 6                               # every order of b, c, e shows up


HOSTS = [MxHost(10, "mx1.example.test"), MxHost(20, "mx2.example.test"),
         MxHost(20, "mx3.example.test"), MxHost(30, "backup.example.test")]


@pytest.mark.parametrize("me,expected", [
    ("backup.example.test", ["mx1.example.test", "mx2.example.test", "mx3.example.test"]),
    ("MX2.Example.Test.", ["mx1.example.test"]),
    ("mx1.example.test", []),
    ("unlisted.example.test", ["mx1.example.test", "mx2.example.test", "mx3.example.test",
                               "backup.example.test"]),
])
def test_backup_filter_keeps_strictly_better_mxs(me, expected):
    assert [h.name for h in backup_filter(HOSTS, me)] == expected


def test_backup_filter_compares_idn_names_as_a_labels():
    hosts = [MxHost(10, "mx.example.test"), MxHost(20, "xn--bcher-kva.example.test")]
    assert backup_filter(hosts, "bücher.example.test") == [hosts[0]]
    assert canonical("Bücher.Example.Test.") == "xn--bcher-kva.example.test"


@pytest.mark.parametrize("text,address", [
    ("[192.0.2.1]", "192.0.2.1"),
    ("[IPv6:2001:DB8:0::1]", "2001:db8::1"),
    ("[ipv6:::1]", "::1"),
    ("example.test", None),
    ("192.0.2.1", None),                                # a literal has brackets
])
def test_address_literals(text, address):
    assert address_literal(text) == address


@pytest.mark.parametrize("text", ["[]", "[example.test]", "[IPv6:192.0.2.1]", "[192.0.2.300]",
                                  "[2001:db8::1]"])
def test_a_bracketed_non_address_is_permanent(text):
    with pytest.raises(PermFail) as caught:
        address_literal(text)
    assert caught.value.reply == INVALID_DOMAIN


@pytest.mark.parametrize("field,value", [
    ("timeout", 0), ("lifetime", -1), ("negative_ttl", -1), ("max_ttl", -5),
    ("cache_size", -1), ("max_mx", 0), ("max_addresses", 0), ("max_queries", 0),
    ("edns_payload", 100),
])
def test_settings_refuse_nonsense(field, value):
    with pytest.raises(ValueError):
        DnsSettings(**{field: value})


ALLOWED = ("postillion.table", "postillion.queue.envelope", "postillion.errors",
           "postillion.log", "postillion.config.model", "postillion.mta", "postillion.tls",
           "postillion.metrics",     # a leaf: the metric objects (docs/metrics.md)
           # The one relay URL parser, for URLs fetched from a table (and its token types).
           "postillion.config.relay", "postillion.config.lexer", "postillion.config.stream")


def test_the_mta_package_imports_only_what_the_design_allows():
    """docs/architecture.md: mta imports table, queue.envelope, config.model and the leaves."""
    for path in sorted(MTA.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if isinstance(node, ast.ImportFrom) and node.module == "postillion":
                names = [f"postillion.{a.name}" for a in node.names]   # from postillion import log
            for name in names:
                if name.startswith("postillion"):
                    assert name.startswith(ALLOWED), f"{path.name} imports {name}"
