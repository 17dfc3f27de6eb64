"""A real LDAP server on loopback for tests: our own slapd, never the system's.

Debian's slapd package starts a system server with debconf defaults when it
is installed; the tests never touch it.  `SlapdServer(root)` writes a
`slapd.conf` under `root` (schemas core, cosine, inetorgperson, nis and misc, one
mdb database in `root/db` with the suffix `dc=example,dc=test` and an admin
bind DN), runs `slapd -d 0` in the foreground as a child process on
127.0.0.1 and a free port, waits until it answers, and loads the test DIT
(`BASE_LDIF`) with `ldapadd`.  `stop()` ends it; `start()` again brings the
same database back on the same port (the outage tests).

A missing slapd or ldapadd fails the test (`make test-deps` installs the
Debian packages slapd and ldap-utils); it is never a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import free_port

HOST = "127.0.0.1"
SUFFIX = "dc=example,dc=test"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PASSWORD = "admin-secret"
SCHEMAS = ("core", "cosine", "inetorgperson", "nis", "misc")
SCHEMA_DIR = "/etc/ldap/schema"
MODULE_DIR = "/usr/lib/ldap"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
TOOL_TIMEOUT = 10.0

#: The test DIT: people with mail addresses, aliases, domains and a
#: bind account for the mail server (which may read userPassword).
BASE_LDIF = f"""\
dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
o: Postillion tests
dc: example

dn: ou=people,{SUFFIX}
objectClass: organizationalUnit
ou: people

dn: ou=domains,{SUFFIX}
objectClass: organizationalUnit
ou: domains

dn: ou=tables,{SUFFIX}
objectClass: organizationalUnit
ou: tables

dn: uid=alice,ou=people,{SUFFIX}
objectClass: inetOrgPerson
objectClass: posixAccount
uid: alice
cn: Alice Example
sn: Example
mail: alice@example.test
mail: a.example@example.test
uidNumber: 1000
gidNumber: 1000
homeDirectory: /home/alice
userPassword: $2b$12$abcdefghijklmnopqrstuv

dn: uid=bob,ou=people,{SUFFIX}
objectClass: inetOrgPerson
objectClass: posixAccount
uid: bob
cn: Bob Example
sn: Example
mail: bob@example.test
uidNumber: 1001
gidNumber: 1001
homeDirectory: /home/bob
userPassword: $6$salt$hash

dn: cn=postmaster,ou=people,{SUFFIX}
objectClass: nisMailAlias
cn: postmaster
rfc822MailMember: alice
rfc822MailMember: bob@example.test

dn: dc=example.test,ou=domains,{SUFFIX}
objectClass: domain
dc: example.test

dn: dc=other.test,ou=domains,{SUFFIX}
objectClass: domain
dc: other.test

dn: cn=mailer,{SUFFIX}
objectClass: simpleSecurityObject
objectClass: organizationalRole
cn: mailer
userPassword: mailer-secret
"""
MAILER_DN = f"cn=mailer,{SUFFIX}"
MAILER_PASSWORD = "mailer-secret"


def _binary(name: str, package: str) -> str:
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    found = shutil.which(name, path=path)
    if found is None:
        raise AssertionError(f"{name} not found: the LDAP tests need Debian's {package}"
                             " (installed by `make test-deps`)")
    return found


class SlapdServer:
    """One slapd of ours, its config and database under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.slapd = _binary("slapd", "slapd")
        self.ldapadd = _binary("ldapadd", "ldap-utils")
        self.port = free_port(HOST)
        self.url = f"ldap://{HOST}:{self.port}/"
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = root / "slapd.conf"
        self.db = root / "db"
        self.loaded = False

    def _write_conf(self) -> None:
        self.db.mkdir(parents=True, exist_ok=True)
        lines = [f"include {SCHEMA_DIR}/{s}.schema" for s in SCHEMAS]
        lines += [
            f"pidfile {self.root / 'slapd.pid'}",
            f"modulepath {MODULE_DIR}",
            "moduleload back_mdb",
            "database mdb",
            f'suffix "{SUFFIX}"',
            f'rootdn "{ADMIN_DN}"',
            f"rootpw {ADMIN_PASSWORD}",
            f"directory {self.db}",
            "maxsize 33554432",
            # the mail server's account reads everything; nobody else does
            f'access to * by dn.exact="{MAILER_DN}" read by anonymous auth by * none',
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        assert self.proc is None, "slapd already running"
        if not self.conf.exists():
            self._write_conf()
        with open(self.root / "slapd.log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.slapd, "-d", "0", "-h", self.url, "-f", str(self.conf)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                log = (self.root / "slapd.log").read_text(errors="replace")[-2000:]
                self.proc = None
                raise AssertionError(f"slapd exited at start:\n{log}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"slapd did not listen on {self.url} in time")
                time.sleep(0.05)
        if not self.loaded:
            self.add(BASE_LDIF)
            self.loaded = True

    def add(self, ldif: str) -> None:
        """Add entries as the admin, with ldapadd (fails the test on error)."""
        done = subprocess.run(
            [self.ldapadd, "-x", "-H", self.url, "-D", ADMIN_DN, "-w", ADMIN_PASSWORD],
            input=ldif.encode(), capture_output=True, timeout=TOOL_TIMEOUT, check=False)
        assert done.returncode == 0, f"ldapadd failed: {done.stderr.decode(errors='replace')}"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)


@pytest.fixture(scope="session")
def slapd_server(tmp_path_factory) -> Iterator[SlapdServer]:
    """One slapd for the session, with the test DIT loaded."""
    server = SlapdServer(tmp_path_factory.mktemp("slapd"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_slapd(tmp_path_factory) -> Iterator[SlapdServer]:
    """A slapd for one test, which it may stop and restart (outages)."""
    server = SlapdServer(tmp_path_factory.mktemp("slapd-own"))
    server.start()
    yield server
    server.stop()
