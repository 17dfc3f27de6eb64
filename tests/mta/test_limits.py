"""`mta limit` settings (mta/limits.py): defaults, `limits_for`, and the parser's keys.

Every key the config parser accepts maps to a field, every field with a key
is in docs/configuration.md's table with the default the code has, and
`for domain D` lines apply over the global ones.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from postillion.config import parse
from postillion.config.model import MtaLimit, MtaOptions
from postillion.config.parser import MTA_FAMILIES, MTA_LIMITS
from postillion.mta.limits import FAMILY_KEY, KEYS, SCOPES, MtaLimits, limits_for


def test_defaults_are_opensmtpd_s():
    limits = limits_for(MtaOptions())
    assert (limits.max_conn_per_host, limits.max_conn_per_route, limits.max_conn_per_source,
            limits.max_conn_per_connector, limits.max_conn_per_relay,
            limits.max_conn_per_domain) == (10, 5, 100, 20, 100, 100)
    assert limits.conn_delay_route == 5 and limits.conn_delay_relay == 2
    assert limits.reconn_delay_route == 3
    assert limits.conn_delay_host == limits.conn_delay_source == 0
    assert limits.session_mail_max == 100 and limits.max_failures_per_session == 25
    assert limits.inet4 and limits.inet6
    assert (limits.connect_timeout, limits.reply_timeout, limits.data_timeout) == (30, 300, 600)
    assert [limits.disable_delay(p) for p in (1, 2, 15, 16, 100)] == [15, 60, 3375, 3600, 3600]
    assert limits.max_penalty == 16


def test_limits_for_applies_global_then_domain_lines():
    config = parse("""\
mta limit max-conn-per-host 3 conn-delay-route 1m
mta limit for domain Example.COM max-conn-per-host 7 session-mail-max 0 inet6
mta limit max-conn-per-host 4 max-conn-per-route 2
mta limit for domain other.example max-conn-per-route 9
""", "smtpd.conf")
    glob = limits_for(config.mta)
    assert (glob.max_conn_per_host, glob.max_conn_per_route, glob.conn_delay_route) == (4, 2, 60)
    assert glob.inet4 and glob.inet6
    ex = limits_for(config.mta, "example.com.")
    assert (ex.max_conn_per_host, ex.max_conn_per_route, ex.session_mail_max) == (7, 2, 0)
    assert ex.conn_delay_route == 60 and not ex.inet4 and ex.inet6
    assert limits_for(config.mta, "sub.example.com") == glob
    assert limits_for(config.mta, "other.example").max_conn_per_route == 9


def test_last_family_line_wins():
    opts = MtaOptions(limits=(MtaLimit(FAMILY_KEY, 6), MtaLimit(FAMILY_KEY, 4)))
    limits = limits_for(opts)
    assert limits.inet4 and not limits.inet6


def test_every_parser_key_maps_to_a_field():
    assert set(MTA_LIMITS) == set(KEYS)
    names = {f.name for f in fields(MtaLimits)}
    for key in MTA_LIMITS:
        assert KEYS[key] == key.replace("-", "_") in names
        config = parse(f"mta limit {key} 7\n", "smtpd.conf")
        assert getattr(limits_for(config.mta), KEYS[key]) == 7
    for family in MTA_FAMILIES:
        config = parse(f"mta limit {family}\n", "smtpd.conf")
        limits = limits_for(config.mta)
        assert (limits.inet4, limits.inet6) == (family == "inet4", family == "inet6")
    for scope in SCOPES:
        assert f"max-conn-per-{scope}" in KEYS and f"conn-delay-{scope}" in KEYS
        assert f"reconn-delay-{scope}" in KEYS


def test_unknown_key_is_a_bug():
    with pytest.raises(ValueError):
        limits_for(MtaOptions(limits=(MtaLimit("max-conn-per-planet", 1),)))
    with pytest.raises(ValueError):
        MtaLimits(max_conn_per_host=-1)


def test_configuration_md_lists_every_key_with_its_default():
    """docs/configuration.md's `mta limit` table: one row per key, the default as code has it."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    rows = dict(re.findall(r"^  \| `([a-z-]+) [ND]` \| ([^|]+) \|$", docs, re.MULTILINE))
    assert set(rows) == set(KEYS)
    defaults = MtaLimits()
    for key, text in rows.items():
        written = re.match(r"(\d+)(s?)", text.strip())
        assert written, (key, text)
        assert float(written.group(1)) == getattr(defaults, KEYS[key]), key
    assert "| `inet4` / `inet6` (no value) | both families" in docs


def test_delays_parse_with_units():
    config = parse("mta limit conn-delay-route 10s reconn-delay-relay 2m conn-delay-host 4\n",
                   "smtpd.conf")
    limits = limits_for(config.mta)
    assert (limits.conn_delay_route, limits.reconn_delay_relay, limits.conn_delay_host) == (10, 120, 4)
