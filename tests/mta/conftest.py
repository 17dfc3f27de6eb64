"""Fixtures for the MTA's tests.

A real DNS server on loopback (tests/dnsserver.py).  For the client:
`secure_uvloop` is the real daemon in-process (STARTTLS, SMTPS and
submission listeners, a trustme CA, a credentials table), the peer to relay
to; the session tests run on plain asyncio and on uvloop (which the daemon
uses when installed): STARTTLS's "nothing may be buffered before the
handshake" rests on how each loop starts TLS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from tests.dnsserver import DnsServer, DnsServers, Zones, standard_zones
from tests.e2e.conftest import daemon  # noqa: F401  (fixture)
from tests.e2e.inproc import secure_uvloop  # noqa: F401  (fixture)

LOOPS: dict[str, object] = {"asyncio": asyncio.new_event_loop}
try:
    import uvloop
    LOOPS["uvloop"] = uvloop.new_event_loop
except ImportError:       # the `speed` extra is optional: plain asyncio only
    pass


@pytest.hookimpl(optionalhook=True)
def pytest_asyncio_loop_factories(config, item):
    if item.module is not None and item.module.__name__.endswith("test_client_session"):
        return LOOPS
    return {"asyncio": asyncio.new_event_loop}


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
