"""A real DNS server on loopback for tests: dnsmasq with zones a test builds.

`Zones` collects records (MX, hosts with A/AAAA and their PTR, TXT, PTR,
CNAME) and two kinds of broken domain: `servfail` (the server answers
SERVFAIL) and `timeout` (it never answers).  `DnsServers(root).start(zones)`
writes dnsmasq's configuration under `root`, runs dnsmasq in the foreground
as a child process on 127.0.0.1 and a free port, waits until it answers and
returns a `DnsServer` (`.nameservers` is what `MxResolver` takes); `stop_all()`
kills every one.  Nothing outside `root` is read or written: no
/etc/resolv.conf, no /etc/hosts, no system service.

Why dnsmasq: Debian's `dnsmasq-base` is the binary alone, with no service
that an install would start (unbound's package would start one and rewrite
resolv.conf).  Every name under `.test` (and the reverse zones) is answered
from the configuration only: a name without records is NXDOMAIN, a name with
records of other types is NODATA.  A `servfail` domain is forwarded to a
second dnsmasq serving it unsigned, while the first holds a DNSSEC trust
anchor for it: validation fails (BOGUS) and the client gets a genuine
SERVFAIL at once.  A `timeout` domain is forwarded to a port nobody listens
on.  Records take the zone's `ttl` (dnsmasq's local-ttl) unless a host
record gives its own.

A missing dnsmasq fails the test (`make test-deps` installs dnsmasq-base);
it is never a skip.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.query

from tests.e2e.conftest import free_port

HOST = "127.0.0.1"
START_TIMEOUT = 10.0          # seconds for dnsmasq to answer its first query
STOP_TIMEOUT = 5.0
#: DS records used only as DNSSEC trust anchors, so that unsigned answers for a
#: `servfail` domain fail validation; their digests match no key anywhere.
ROOT_ANCHOR = ".,20326,8,2,E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D"
DOMAIN_ANCHOR = "{},12345,8,2,49FD46E6C4B45C55D4AC69CBD3CD34AC1AFE51DE5B0B1BAF4C1CA3A73C4FB0F8"
_NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")


def dnsmasq_binary() -> str:
    """dnsmasq's path, or AssertionError saying how to install it."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    found = shutil.which("dnsmasq", path=path)
    if found is None:
        raise AssertionError("dnsmasq not found: the DNS tests need Debian's dnsmasq-base"
                             " (installed by `make test-deps`)")
    return found


def _check(name: str) -> str:
    name = name.rstrip(".").lower()
    if name != "." and not _NAME.match(name):
        raise ValueError(f"not a test DNS name: {name!r}")
    return name


@dataclass
class Zones:
    """DNS data for a test server; each method returns self, so calls chain."""

    ttl: int = 300
    mxs: list[tuple[str, int, str]] = field(default_factory=list)
    hosts: list[tuple[str, tuple[str, ...], int | None]] = field(default_factory=list)
    txts: list[tuple[str, str]] = field(default_factory=list)
    ptrs: list[tuple[str, str]] = field(default_factory=list)
    cnames: list[tuple[str, str]] = field(default_factory=list)
    servfails: list[str] = field(default_factory=list)
    timeouts: list[str] = field(default_factory=list)

    def mx(self, domain: str, preference: int, target: str) -> Zones:
        self.mxs.append((_check(domain), preference, _check(target) if target != "." else "."))
        return self

    def null_mx(self, domain: str) -> Zones:
        """RFC 7505: a single MX "." at preference 0."""
        return self.mx(domain, 0, ".")

    def host(self, name: str, *addresses: str, ttl: int | None = None) -> Zones:
        """A and AAAA records for name (and the PTR of each address)."""
        self.hosts.append((_check(name), addresses, ttl))
        return self

    def txt(self, name: str, text: str = "exists") -> Zones:
        """A name with only a TXT record: A, AAAA and MX queries get NODATA."""
        self.txts.append((_check(name), text.replace('"', "")))
        return self

    def ptr(self, address: str, name: str) -> Zones:
        self.ptrs.append((address, _check(name)))
        return self

    def cname(self, alias: str, target: str) -> Zones:
        """alias CNAME target; target must be a `host` of these zones (dnsmasq's rule)."""
        self.cnames.append((_check(alias), _check(target)))
        return self

    def servfail(self, domain: str) -> Zones:
        """Every query at or under domain is answered SERVFAIL."""
        self.servfails.append(_check(domain))
        return self

    def timeout(self, domain: str) -> Zones:
        """Every query at or under domain is never answered."""
        self.timeouts.append(_check(domain))
        return self

    def names(self) -> set[str]:
        named = {d for d, _, _ in self.mxs} | {n for n, _, _ in self.hosts}
        return named | {n for n, _ in self.txts} | {a for a, _ in self.cnames}

    def config(self, upstream: int | None, dead: int | None) -> list[str]:
        """dnsmasq configuration lines for these zones (without port and logging)."""
        lines = [f"local-ttl={self.ttl}", "local=/test/", "local=/in-addr.arpa/",
                 "local=/ip6.arpa/"]
        lines += [f"local=/{name}/" for name in sorted(self.names()) if not name.endswith(".test")]
        lines += [f"mx-host={domain},{target},{pref}" for domain, pref, target in self.mxs]
        for name, addresses, ttl in self.hosts:
            lines.append(f"host-record={','.join([name, *addresses])}"
                         + (f",{ttl}" if ttl is not None else ""))
        lines += [f'txt-record={name},"{text}"' for name, text in self.txts]
        lines += [f"ptr-record={_reverse(address)},{name}" for address, name in self.ptrs]
        lines += [f"cname={alias},{target}" for alias, target in self.cnames]
        if self.servfails:
            lines += ["dnssec", "dnssec-no-timecheck", f"trust-anchor={ROOT_ANCHOR}"]
            for domain in self.servfails:
                lines += [f"server=/{domain}/{HOST}#{upstream}",
                          f"trust-anchor={DOMAIN_ANCHOR.format(domain)}"]
        lines += [f"server=/{domain}/{HOST}#{dead}" for domain in self.timeouts]
        return lines

    def upstream_config(self) -> list[str]:
        """The unsigned server behind the `servfail` domains."""
        lines = ["local-ttl=60"]
        for domain in self.servfails:
            lines += [f"local=/{domain}/", f"mx-host={domain},mx.{domain},10"]
        return lines


def _reverse(address: str) -> str:
    return ipaddress.ip_address(address).reverse_pointer


def standard_zones() -> Zones:
    """The zones the MTA's DNS tests use (and later tests may start from).

    Every address is on loopback (127.0.0.0/8, ::1): a test that connects to
    what these zones say never leaves the machine.
    """
    return (Zones()
            # Preference order and shuffling: mx1 best; mx2 and mx3 equal.
            .mx("mx.test", 10, "mx1.mx.test").mx("mx.test", 20, "mx2.mx.test")
            .mx("mx.test", 20, "mx3.mx.test")
            .host("mx1.mx.test", "127.0.0.2", "::1").host("mx2.mx.test", "127.0.0.3")
            .host("mx3.mx.test", "127.0.0.4")
            # No MX: the domain is its own MX (its A, or AAAA only).
            .host("implicit.test", "127.0.0.5").host("v6only.test", "::1")
            # Domains that do not accept mail.
            .null_mx("nullmx.test").mx("localhost-mx.test", 10, "localhost")
            # localhost beside a real MX: the real one is used.
            .mx("half-localhost.test", 10, "localhost").mx("half-localhost.test", 20, "mx2.mx.test")
            # MX hosts without addresses: NXDOMAIN and NODATA.
            .mx("noaddr.test", 10, "ghost.noaddr.test").mx("noaddr.test", 20, "txt.noaddr.test")
            .txt("txt.noaddr.test")
            # One MX host without address, one with: the one with is used.
            .mx("partial.test", 10, "ghost.partial.test").mx("partial.test", 20, "mx2.mx.test")
            # MX hosts whose own lookups fail.
            .mx("hostfail.test", 10, "mx.servfail.test")
            # A name with a TXT record only: MX and A both NODATA.
            .txt("bare.test")
            # Broken servers.
            .servfail("servfail.test").timeout("timeout.test")
            # Backup MX: primary 10, backup1 20, backup2 30.
            .mx("backup.test", 10, "primary.backup.test").mx("backup.test", 20, "backup1.backup.test")
            .mx("backup.test", 30, "backup2.backup.test")
            .host("primary.backup.test", "127.0.0.6").host("backup1.backup.test", "127.0.0.7")
            .host("backup2.backup.test", "127.0.0.8")
            # A relay host (smarthost), with a CNAME to it, and one with a 1 s TTL.
            .host("smarthost.test", "127.0.0.9", "::1").cname("relay.test", "smarthost.test")
            .host("short.test", "127.0.0.10", ttl=1)
            # A PTR without a forward name.
            .ptr("127.0.0.11", "reverse-only.test"))


@dataclass
class _Process:
    name: str
    config: Path
    log: Path
    proc: subprocess.Popen | None = None

    def start(self, binary: str, port: int) -> None:
        with open(self.log, "ab") as out:         # the child keeps its own copy
            self.proc = subprocess.Popen([binary, "--keep-in-foreground", f"--conf-file={self.config}"],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        # dnsmasq binds its TCP and UDP sockets before it answers anything:
        # a refused TCP connect says "not yet" at once, where a UDP probe
        # would wait out its timeout.  Then one real query proves it answers.
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.text()}")
            try:
                socket.create_connection((HOST, port), timeout=0.5).close()
                dns.query.udp(dns.message.make_query("ready.test.", "A"), HOST, port=port,
                              timeout=1.0)
                return
            except (dns.exception.Timeout, OSError):
                time.sleep(0.005)
        self.stop()
        raise AssertionError(f"{self.name} not answering on {HOST}#{port} after"
                             f" {START_TIMEOUT}s:\n{self.text()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self.proc = None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class DnsServer:
    """One test DNS server (and, for `servfail` zones, its upstream)."""

    def __init__(self, zones: Zones, root: Path, port: int | None = None) -> None:
        self.zones = zones
        self.root = root
        self.host = HOST
        self.port = port or free_port(HOST)
        self._upstream_port = free_port(HOST) if zones.servfails else None
        self._dead_port = free_port(HOST) if zones.timeouts else None
        root.mkdir(parents=True, exist_ok=True)
        self._main = _Process("dnsmasq", root / "dnsmasq.conf", root / "dnsmasq.log")
        self._upstream = _Process("dnsmasq (upstream)", root / "upstream.conf", root / "upstream.log")

    @property
    def nameservers(self) -> list[tuple[str, int]]:
        return [(self.host, self.port)]

    @property
    def running(self) -> bool:
        return self._main.proc is not None and self._main.proc.poll() is None

    def start(self) -> DnsServer:
        binary = dnsmasq_binary()
        if self._upstream_port is not None:
            _write(self._upstream.config, self._upstream_port, self.zones.upstream_config())
            self._upstream.start(binary, self._upstream_port)
        _write(self._main.config, self.port,
               self.zones.config(self._upstream_port, self._dead_port))
        self._main.start(binary, self.port)
        return self

    def stop(self) -> None:
        self._main.stop()
        self._upstream.stop()

    def log(self) -> str:
        return self._main.text() + self._upstream.text()


def _write(path: Path, port: int, lines: list[str]) -> None:
    base = [f"port={port}", f"listen-address={HOST}", "bind-interfaces", "no-resolv",
            "no-hosts", "no-poll", "pid-file=", "log-queries", "log-facility=-"]
    for line in lines:
        if "\n" in line or "\r" in line:
            raise ValueError(f"bad dnsmasq line {line!r}")
    path.write_text("\n".join(base + lines) + "\n")


class DnsServers:
    """Starts test DNS servers under root and stops every one at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.servers: list[DnsServer] = []

    def start(self, zones: Zones, port: int | None = None) -> DnsServer:
        server = DnsServer(zones, self.root / f"dns{len(self.servers)}", port)
        self.servers.append(server)
        return server.start()

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()
