"""`postillion table lookup` and `postillion check` on postgres: and mysql: tables.

Run as subprocesses against the real servers, each test in a schema or
database of its own (tests/table/sqlservers.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import free_port
from tests.table.sqlservers import my_conninfo, my_run, pg_conninfo, pg_run, unique
from tests.tools.test_tables import assert_one_line_error, postillion

SMTPD = """\
table users {kind}:{conf}
table virtuals {kind}:{conf}
listen on 127.0.0.1 port 2525
action "local" maildir virtual <virtuals> userbase <users>
match from any for domain example.test action "local"
"""


@dataclass
class Site:
    kind: str
    space: str
    root: Path
    param: str

    def write(self, queries: str, connection: str | None = None) -> Path:
        conf = self.root / f"{self.kind}.conf"
        conf.write_text((connection or self.connection()) + queries.format(s=self.space,
                                                                           p=self.param))
        smtpd = self.root / "smtpd.conf"
        smtpd.write_text(SMTPD.format(kind=self.kind, conf=conf))
        return smtpd

    def connection(self, port: int | None = None) -> str:
        if self.kind == "postgres":
            return pg_conninfo(port=port) if port else pg_conninfo()
        return my_conninfo(self.space, port=port) if port else my_conninfo(self.space)


QUERIES = ("query_alias SELECT target FROM {s}.virtuals WHERE address = {p}\n"
           "query_userinfo SELECT uid, gid, home FROM {s}.users WHERE name = {p}\n")


@pytest.fixture(params=["postgres", "mysql"])
def site(request, tmp_path) -> Iterator[Site]:
    kind = request.param
    space = unique(f"pt_{kind}")
    run = pg_run if kind == "postgres" else my_run
    run([f"CREATE SCHEMA {space}" if kind == "postgres" else f"CREATE DATABASE {space}"])
    run([f"CREATE TABLE {space}.virtuals (address VARCHAR(255), target TEXT)",
         f"CREATE TABLE {space}.users (name VARCHAR(255), uid INT, gid INT, home TEXT)",
         f"INSERT INTO {space}.virtuals VALUES ('alice@example.test', 'alice')",
         f"INSERT INTO {space}.users VALUES ('alice', 1000, 1000, '/home/alice')"])
    s = Site(kind, space, tmp_path, "$1" if kind == "postgres" else "?")
    s.write(QUERIES)
    yield s
    run([f"DROP SCHEMA {space} CASCADE" if kind == "postgres" else f"DROP DATABASE {space}"])


def lookup(site: Site, *args: str):
    return postillion("table", "lookup", "-f", str(site.root / "smtpd.conf"), *args)


def test_lookup(site):
    result = lookup(site, "users", "userinfo", "Alice")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "alice:1000:1000:/home/alice\n"
    result = lookup(site, "virtuals", "alias", "alice@example.test")
    assert result.returncode == 0 and result.stdout == "alice\n"
    assert_one_line_error(lookup(site, "users", "userinfo", "bob"), 1)
    for key in ("alice' OR '1'='1", "x'; DROP TABLE users; --", "%", "_", "alice\\"):
        assert lookup(site, "users", "userinfo", key).returncode == 1
    assert lookup(site, "users", "userinfo", "alice").returncode == 0


def test_lookup_with_the_server_down(site):
    site.write(QUERIES, site.connection(port=free_port()))
    line = assert_one_line_error(lookup(site, "users", "userinfo", "alice"), 2)
    assert f"table users: {site.kind}:" in line and "cannot connect" in line


def test_check_connects_and_runs_each_query(site):
    result = postillion("check", "-f", str(site.root / "smtpd.conf"))
    assert result.returncode == 0, result.stderr
    smtpd = site.write(QUERIES + "query_domain SELECT name FROM {s}.nosuch WHERE name = {p}\n")
    result = postillion("check", "-f", str(smtpd))
    assert result.returncode != 0
    line = len(site.connection().splitlines()) + 3
    assert f"{site.kind}.conf:{line}: query_domain:" in result.stderr and "nosuch" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_with_the_server_down(site):
    smtpd = site.write(QUERIES + "connect_timeout 1\n", site.connection(port=free_port()))
    result = postillion("check", "-f", str(smtpd))
    assert result.returncode != 0
    assert f"table users: {site.kind}: {site.kind}: cannot connect" in result.stderr
    assert "Traceback" not in result.stderr
