"""The ldap backend against a real slapd (tests/ldapserver.py): a directory
as administrators lay it out, filter escaping, config errors at open,
outages and recovery, and the `postillion` commands on an ldap table.

(The conformance suite runs the same logical tables over ldap as over the
local backends: test_conformance.py.)
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from postillion.errors import LookupUnavailable
from postillion.table import Credentials, ExpandList, Service, TableError, Userinfo, open_table
from postillion.table.backends.ldap import search_filter, searchable
from tests.ldapserver import MAILER_DN, MAILER_PASSWORD, SUFFIX, SlapdServer
from tests.tcpproxy import TcpProxy

DIRECTORY = """\
basedn {suffix}
alias_filter (&(objectClass=nisMailAlias)(cn=%s))
alias_attributes rfc822MailMember
mailaddrmap_filter (&(objectClass=inetOrgPerson)(uid=%s))
mailaddrmap_attributes mail
userinfo_filter (&(objectClass=posixAccount)(uid=%s))
userinfo_attributes uidNumber, gidNumber, homeDirectory
credentials_filter (&(objectClass=posixAccount)(uid=%s))
credentials_attributes uid, userPassword
domain_filter (&(objectClass=domain)(dc=%s))
domain_attributes dc
mailaddr_filter (&(objectClass=inetOrgPerson)(mail=%s))
mailaddr_attributes mail
"""


def write_conf(path: Path, server: SlapdServer, extra: str = "", *,
               password: str = MAILER_PASSWORD, body: str = DIRECTORY) -> str:
    path.write_text(f"url {server.url}\nusername {MAILER_DN}\npassword {password}\n"
                    + body.format(suffix=SUFFIX) + extra)
    return str(path)


async def opened(conf: str, name: str = "dir"):
    table = open_table(name, "ldap", conf)
    await table.open()
    return table


async def test_a_real_directory(slapd_server, tmp_path):
    t = await opened(write_conf(tmp_path / "ldap.conf", slapd_server))
    try:
        assert await t.lookup(Service.ALIAS, "PostMaster") == \
            ExpandList(("alice", "bob@example.test"))
        assert await t.lookup(Service.USERINFO, "alice") == \
            Userinfo("alice", 1000, 1000, "/home/alice")
        assert await t.lookup(Service.CREDENTIALS, "bob") == Credentials("bob", "$6$salt$hash")
        assert await t.check(Service.DOMAIN, "Example.Test")
        assert not await t.check(Service.DOMAIN, "sub.example.test")
        assert await t.check(Service.MAILADDR, "a.example@example.test")
        senders = await t.lookup(Service.MAILADDRMAP, "alice")
        assert senders is not None and len(senders.patterns) == 2
        assert await t.lookup(Service.USERINFO, "nobody") is None
        assert t.serves(Service.ALIAS) and not t.serves(Service.NETADDR)
    finally:
        await t.close()


INJECTIONS = ["*", "(", ")", "\\", "\x00", "*)(uid=*", "alice)(uid=*", "*)(|(uid=*",
              "al*", "alice\x00)(uid=*", "\\2a", " alice", "alice ", "alice\n", "alice\t"]


@pytest.mark.parametrize("key", INJECTIONS)
async def test_injection_keys_find_nothing(slapd_server, tmp_path, key):
    t = await opened(write_conf(tmp_path / "ldap.conf", slapd_server))
    try:
        for service in (Service.USERINFO, Service.CREDENTIALS, Service.MAILADDRMAP):
            assert await t.lookup(service, key) is None
        assert await t.lookup(Service.ALIAS, key) is None
        assert not await t.check(Service.DOMAIN, key)
        assert await t.lookup(Service.USERINFO, "alice") == \
            Userinfo("alice", 1000, 1000, "/home/alice")
    finally:
        await t.close()


def test_filters_are_escaped():
    assert search_filter("(uid=%s)", "*)(uid=*") == r"(uid=\2a\29\28uid=\2a)"
    assert search_filter("(|(uid=%s)(mail=%s))", "a\\b\x00") == \
        r"(|(uid=a\5cb\00)(mail=a\5cb\00))"
    assert not searchable("") and not searchable("a\nb") and not searchable("\udcff")
    assert searchable("alice@example.test") and searchable("jean pierre")


@pytest.mark.parametrize("extra, body, error", [
    ("basdn x\n", DIRECTORY, r'ldap.conf:\d+: unknown key "basdn"'),
    ("", DIRECTORY.replace("alias_attributes rfc822MailMember\n", ""),
     r'ldap.conf:5: "alias_filter" without "alias_attributes"'),
    ("", DIRECTORY.replace("(cn=%s)", "(cn=x)"), r'ldap.conf:5: "alias_filter" has no %s'),
    ("", DIRECTORY.replace("(cn=%s))", "(cn=%s)"), r"ldap.conf:5: .*filter"),
    ("", DIRECTORY.replace("basedn {suffix}", "basedn ou=nowhere,{suffix}"), r"ldap.conf:\d+: .*noSuchObject"),
    ("ca_file ca.pem\n", DIRECTORY, r'ldap.conf:\d+: "ca_file" needs an ldaps:// url'),
    ("query_timeout soon\n", DIRECTORY, r'ldap.conf:\d+: "query_timeout" wants a number'),
])
async def test_config_errors_name_file_and_line(slapd_server, tmp_path, extra, body, error):
    conf = write_conf(tmp_path / "ldap.conf", slapd_server, extra, body=body)
    with pytest.raises(TableError, match=r"table dir: ldap: .*" + error):
        await opened(conf)


async def test_wrong_password_and_bad_url_at_open(slapd_server, tmp_path):
    conf = write_conf(tmp_path / "ldap.conf", slapd_server, password="Not-The-Passw0rd")
    with pytest.raises(TableError, match=r"ldap.conf:1: bind as cn=mailer.* refused") as info:
        await opened(conf)
    assert "Not-The-Passw0rd" not in str(info.value)
    (tmp_path / "url.conf").write_text(f"url http://127.0.0.1/\nbasedn {SUFFIX}\n"
                                       "domain_filter (dc=%s)\ndomain_attributes dc\n")
    with pytest.raises(TableError, match=r'url.conf:1: "url" wants ldap://'):
        await opened(str(tmp_path / "url.conf"))


async def test_outage_is_temporary_and_recovers_by_itself(own_slapd, tmp_path):
    t = await opened(write_conf(tmp_path / "ldap.conf", own_slapd,
                                "connect_timeout 2\nquery_timeout 2\n"))
    try:
        assert await t.lookup(Service.USERINFO, "alice") is not None
        own_slapd.stop()
        for key in ("alice", "nobody"):      # down is never "not found"
            with pytest.raises(LookupUnavailable) as info:
                await t.lookup(Service.USERINFO, key)
            assert info.value.reply.code == 451 and info.value.reply.enhanced == "4.3.0"
        own_slapd.start()
        assert await t.lookup(Service.USERINFO, "alice") == \
            Userinfo("alice", 1000, 1000, "/home/alice")
        assert await t.lookup(Service.USERINFO, "nobody") is None
        # a restart between two lookups costs none: the closed idle
        # connection is replaced within the lookup
        own_slapd.stop()
        own_slapd.start()
        assert await t.lookup(Service.USERINFO, "alice") is not None
    finally:
        await t.close()


class StallingProxy:
    """A TCP proxy on the test's own loop between the table and slapd; while
    `stalled`, it holds back slapd's answers (a server that hangs)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.stalled = False
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    from_server: bool) -> None:
        try:
            while data := await reader.read(65536):
                if from_server and self.stalled:
                    continue            # swallowed: the client waits for ever
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]
        await asyncio.gather(self._pipe(reader, up_writer, False),
                             self._pipe(up_reader, writer, True))

    async def close(self) -> None:
        for w in self.writers:
            w.close()
        if self.server is not None:
            self.server.close()


async def test_a_stalled_server_costs_a_timeout_not_the_loop(slapd_server, tmp_path):
    proxy = StallingProxy(slapd_server.port)
    await proxy.start()
    conf = write_conf(tmp_path / "ldap.conf", slapd_server,
                      "connect_timeout 2\nquery_timeout 1\nmax_connections 3\n")
    Path(conf).write_text(Path(conf).read_text().replace(
        slapd_server.url, f"ldap://127.0.0.1:{proxy.port}/"))
    t = await opened(conf)
    try:
        assert await t.lookup(Service.USERINFO, "alice") is not None
        proxy.stalled = True
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        # The idle connection's search is cut at query_timeout (1 s)...
        started = time.monotonic()
        with pytest.raises(LookupUnavailable):
            await t.lookup(Service.USERINFO, "alice")
        assert time.monotonic() - started < 2.5
        # ...new connections' binds at connect_timeout (2 s), all at once.
        started = time.monotonic()
        results = await asyncio.gather(*(t.lookup(Service.USERINFO, "alice") for _ in range(3)),
                                       return_exceptions=True)
        elapsed = time.monotonic() - started
        ticking.cancel()
        assert all(isinstance(r, LookupUnavailable) for r in results), results
        assert elapsed < 4 and ticks > elapsed / 0.05 / 2     # the loop kept running
        proxy.stalled = False
        assert await t.lookup(Service.USERINFO, "alice") == \
            Userinfo("alice", 1000, 1000, "/home/alice")
    finally:
        await t.close()
        await proxy.close()


async def test_a_server_that_never_answers_the_bind_fails_open_in_time(tmp_path, slapd_server):
    silent = socket.create_server(("127.0.0.1", 0))     # accepts (backlog), never answers
    try:
        conf = write_conf(tmp_path / "ldap.conf", slapd_server, "connect_timeout 1\n")
        Path(conf).write_text(Path(conf).read_text().replace(
            slapd_server.url, f"ldap://127.0.0.1:{silent.getsockname()[1]}/"))
        started = time.monotonic()
        with pytest.raises(TableError, match=r"ldap.conf:1: "):
            await opened(conf)
        assert time.monotonic() - started < 5
    finally:
        silent.close()


def postillion(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "postillion.cli", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_table_lookup_and_check_commands(slapd_server, tmp_path):
    write_conf(tmp_path / "ldap.conf", slapd_server)
    smtpd = tmp_path / "smtpd.conf"
    smtpd.write_text(f"table dir ldap:{tmp_path / 'ldap.conf'}\n"
                     "listen on 127.0.0.1 port 2525\n"
                     'action "local" maildir alias <dir> userbase <dir>\n'
                     'match from any for domain <dir> action "local"\n')
    result = postillion("table", "lookup", "-f", str(smtpd), "dir", "userinfo", "Alice")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "alice:1000:1000:/home/alice\n"
    result = postillion("table", "lookup", "-f", str(smtpd), "dir", "userinfo", "*")
    assert result.returncode == 1 and "not found" in result.stderr
    result = postillion("check", "-f", str(smtpd))
    assert result.returncode == 0, result.stderr
    write_conf(tmp_path / "ldap.conf", slapd_server, password="wrong")
    result = postillion("check", "-f", str(smtpd))
    assert result.returncode != 0 and "refused" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("mode", ["cut", "reset", "refuse"])
async def test_a_broken_link_is_temporary_and_heals(slapd_server, tmp_path, mode):
    """Through tests/tcpproxy.py: closed (FIN), reset (RST) or refused
    connections make every lookup a 451 within the timeouts, never "not
    found"; once the link is back the same table answers again, and no
    connection is left held open."""
    proxy = await TcpProxy("127.0.0.1", slapd_server.port).start()
    conf = write_conf(tmp_path / "ldap.conf", slapd_server,
                      "connect_timeout 1\nquery_timeout 1\nmax_connections 3\n")
    Path(conf).write_text(Path(conf).read_text().replace(
        slapd_server.url, f"ldap://127.0.0.1:{proxy.port}/"))
    t = await opened(conf)
    try:
        assert await t.lookup(Service.USERINFO, "alice") is not None
        if mode == "cut":
            proxy.cut()
        elif mode == "reset":
            proxy.reset()
        else:
            await proxy.refuse()
        for key in ("alice", "nobody", "alice"):     # down is never "not found"
            started = time.monotonic()
            with pytest.raises(LookupUnavailable) as info:
                await t.lookup(Service.USERINFO, key)
            assert time.monotonic() - started < 3
            assert info.value.reply.code == 451 and info.value.reply.enhanced == "4.3.0"
        results = await asyncio.gather(*(t.lookup(Service.USERINFO, "alice") for _ in range(4)),
                                       return_exceptions=True)
        assert all(isinstance(r, LookupUnavailable) for r in results), results
        assert await proxy.wait_idle() == 0
        await proxy.restore()
        assert await t.lookup(Service.USERINFO, "alice") == \
            Userinfo("alice", 1000, 1000, "/home/alice")
        assert await t.lookup(Service.USERINFO, "nobody") is None
        results = await asyncio.gather(*(t.lookup(Service.USERINFO, "alice") for _ in range(4)))
        assert all(r is not None for r in results)
        assert proxy.active <= 3                     # max_connections, no more
    finally:
        await t.close()
        try:
            assert await proxy.wait_idle() == 0       # nothing left stuck
        finally:
            await proxy.close()
