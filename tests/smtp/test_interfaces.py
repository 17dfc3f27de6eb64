"""`listen on WORD`: an interface, `egress`, `localhost`, `all`, a name."""

from __future__ import annotations

import socket

import pytest

from postillion.smtp import interfaces


def test_loopback_interface_is_its_addresses():
    assert "lo" in interfaces.interface_names()
    assert interfaces.resolve("lo", 25, socket.AF_INET) == ["127.0.0.1"]
    both = interfaces.resolve("lo", 25, socket.AF_UNSPEC)
    assert both is not None and both[0] == "127.0.0.1"
    assert all(a in ("127.0.0.1", "::1") for a in both)


def test_wildcards_localhost_and_literals():
    assert interfaces.resolve("all", 25, socket.AF_UNSPEC) is None
    assert interfaces.resolve("*", 25, socket.AF_UNSPEC) is None
    assert interfaces.resolve("localhost", 25, socket.AF_INET6) == ["::1"]
    assert interfaces.resolve("127.0.0.2", 25, socket.AF_UNSPEC) == ["127.0.0.2"]


def test_egress_is_the_default_route_interfaces_addresses():
    names = interfaces.egress_interfaces()
    if names:   # a machine without a default route has no egress, and says so
        addresses = interfaces.resolve("egress", 25, socket.AF_UNSPEC)
        assert addresses and "lo" not in names
    else:
        with pytest.raises(interfaces.ListenAddressError, match="default route"):
            interfaces.resolve("egress", 25, socket.AF_UNSPEC)


def test_unknown_words_and_foreign_addresses_are_refused():
    with pytest.raises(interfaces.ListenAddressError, match="neither an interface"):
        interfaces.resolve("nosuchif0.invalid", 25, socket.AF_UNSPEC)
    with pytest.raises(interfaces.ListenAddressError, match="not an address of this machine"):
        interfaces.check_bindable(["192.0.2.1"], socket.AF_UNSPEC)
    interfaces.check_bindable(["127.0.0.1"], socket.AF_UNSPEC)
