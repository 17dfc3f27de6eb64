"""Relays (mta/relay.py): the key envelopes share sessions by, built from a relay action."""

from __future__ import annotations

import pytest

from postillion.config.model import ActionDecl, Position, RelayHost
from postillion.errors import TempFail
from postillion.mta.relay import Relay, relay_for


def action(**kw) -> ActionDecl:
    return ActionDecl("out", "relay", Position("smtpd.conf", 1, 1), **kw)


def test_relay_of_an_mx_action_is_the_domain():
    relay = relay_for(action(src="srcs", helo="h.example.net"), "Example.COM.")
    assert relay == Relay("example.com", src="srcs", helo="h.example.net")
    assert relay == relay_for(action(src="srcs", helo="h.example.net"), "example.com")
    assert len({relay, relay_for(action(src="srcs", helo="h.example.net"), "example.com")}) == 1
    assert str(relay) == "example.com" and relay.effective_port == 25


def test_tls_makes_starttls_mandatory_and_verified():
    relay = relay_for(action(tls=True), "example.com")
    assert relay.scheme == "smtp+tls" and relay.verify
    assert not relay_for(action(tls=True, no_verify=True), "example.com").verify
    assert relay != relay_for(action(), "example.com")


def test_relay_of_a_smarthost():
    host = RelayHost("smtps", "Smart.Example.NET", None, "lab")
    relay = relay_for(action(host=host, auth="secrets"), "example.com")
    assert relay.domain == "smart.example.net" and relay.as_host and relay.verify
    assert relay.label == "lab" and relay.auth == "secrets" and relay.effective_port == 465
    assert str(relay) == "smtps://lab@smart.example.net"
    fetched = relay_for(action(host_table="hosts"), "example.com",
                        relayhost=RelayHost("smtp", "[192.0.2.25]", 2525))
    assert fetched.domain == "[192.0.2.25]" and fetched.port == 2525


def test_relay_refusals():
    with pytest.raises(TempFail) as info:
        relay_for(action(tls=True, host_table="hosts"), "example.com",
                  relayhost=RelayHost("smtp+notls", "smart.example.net"))
    assert info.value.reply.text == "TLS required for relaying"
    with pytest.raises(TempFail):
        relay_for(action(domain="routes"), "example.com",
                  relayhost=RelayHost("smtp+tls", "smart.example.net", label="lab"))
    with pytest.raises(TempFail):
        relay_for(action(auth="secrets", host_table="hosts"), "example.com",
                  relayhost=RelayHost("smtp+tls", "smart.example.net"))
    with pytest.raises(ValueError):
        relay_for(action(host_table="hosts"), "example.com")
    with pytest.raises(ValueError):
        relay_for(ActionDecl("local", "maildir", Position("f", 1, 1)), "example.com")


def test_backup_name():
    assert relay_for(action(backup=True), "example.com", hostname="MX.example.net").backup \
        == "mx.example.net"
    assert relay_for(action(backup=True, backup_mx="mx2.example.net"), "example.com").backup \
        == "mx2.example.net"
