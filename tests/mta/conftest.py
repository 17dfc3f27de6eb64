"""Fixtures for the MTA's tests: a real DNS server on loopback (tests/dnsserver.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.dnsserver import DnsServer, DnsServers, Zones, standard_zones


@pytest.fixture
def dns_servers(tmp_path) -> Iterator[Callable[[Zones], DnsServer]]:
    """start(zones) -> a running DnsServer; every one is killed at teardown."""
    servers = DnsServers(tmp_path / "dns")
    try:
        yield servers.start
    finally:
        servers.stop_all()


@pytest.fixture
def dns_server(dns_servers) -> DnsServer:
    """A DnsServer with `standard_zones()`."""
    return dns_servers(standard_zones())
