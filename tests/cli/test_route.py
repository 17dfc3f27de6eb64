"""`postillion route ADDRESS`: the real command on real tables and a real DNS.

Each test runs `.venv/bin/postillion route` as a subprocess on a
configuration written in tmp_path, with file and sqlite tables, and for the
relays the loopback dnsmasq the MTA's tests use (tests/dnsserver.py) named
by `mta nameserver`.  The world is snapshotted before and after: the
command must leave every file as it was and create none.
"""

from __future__ import annotations

import json
import os
import pwd
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.dnsserver import DnsServer, DnsServers, standard_zones

POSTILLION = str(Path(sys.executable).parent / "postillion")
RUN_TIMEOUT = 60          # seconds one command may take (DNS answers are local)
BOB_UID = 2001            # bob's uid in the userbase (his .forward must be his)


@dataclass
class World:
    root: Path
    conf: Path
    spool: Path
    dns: DnsServer

    def route(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([POSTILLION, "route", "-f", str(self.conf), *args],
                              capture_output=True, text=True, timeout=RUN_TIMEOUT)

    def json(self, *args: str) -> tuple[int, dict]:
        result = self.route("--json", *args)
        assert "Traceback" not in result.stderr, result.stderr
        return result.returncode, json.loads(result.stdout)


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under root with its mode, size and mtime."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_relative_to(root / "dns"):
            continue            # dnsmasq's own files, written by the test server
        st = path.lstat()
        out[str(path)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def _write_tables(root: Path) -> None:
    (root / "vusers").write_text(
        "alice@example.test  vmail\n"
        "postmaster@example.test  alice@example.test\n"
        "list@example.test  :include:" + str(root / "list") + "\n"
        "ops@example.test  ops\n")
    (root / "list").write_text("alice@example.test, bob\n")
    (root / "aliases").write_text(
        f"ops  |/usr/bin/procmail -d ops, {root / 'log' / 'ops.mbox'}, bob\n")
    (root / "secrets").write_text("smart relayuser:relaypassword\n")
    # The userbase in SQLite: vmail for the virtual users, bob a real home.
    db = sqlite3.connect(root / "users.sqlite")
    db.execute("CREATE TABLE users (name TEXT, uid INTEGER, gid INTEGER, home TEXT)")
    db.executemany("INSERT INTO users VALUES (?, ?, ?, ?)",
                   [("vmail", 2000, 2000, str(root / "vmail")),
                    ("bob", BOB_UID, BOB_UID, str(root / "bob"))])
    db.commit()
    db.close()
    (root / "users.conf").write_text(
        f"dbpath {root / 'users.sqlite'}\n"
        "query_userinfo SELECT uid, gid, home FROM users WHERE name = ?\n")
    bob = root / "bob"
    bob.mkdir()
    forward = bob / ".forward"
    forward.write_text(f"bob, {root / 'log' / 'bob.mbox'}\n")
    forward.chmod(0o644)
    if os.geteuid() == 0:
        os.chown(forward, BOB_UID, BOB_UID)   # a .forward is used only when the user's


@pytest.fixture
def world(tmp_path) -> Iterator[World]:
    servers = DnsServers(tmp_path / "dns")
    try:
        dns = servers.start(standard_zones())
        ip, port = dns.nameservers[0]
        _write_tables(tmp_path)
        spool = tmp_path / "spool"
        spool.mkdir(mode=0o700)
        conf = tmp_path / "smtpd.conf"
        conf.write_text(f"""\
mta nameserver {ip} port {port}
table vusers file:{tmp_path / 'vusers'}
table aliases file:{tmp_path / 'aliases'}
table users sqlite:{tmp_path / 'users.conf'}
table secrets file:{tmp_path / 'secrets'}
table domains {{ example.test }}
action "virtual" maildir "{tmp_path}/mail/%{{rcpt.domain}}/%{{rcpt.user}}/Maildir" virtual <vusers> userbase <users>
action "local" mbox alias <aliases> userbase <users>
action "out" relay
action "smart" relay host "smtps://smart@smarthost.test" auth <secrets>
match from local for domain <domains> action "virtual"
match from local for local action "local"
match from local for domain "relay.test" action "smart"
match from local for any action "out"
match from any for domain <domains> action "virtual"
""")
        yield World(tmp_path, conf, spool, dns)
    finally:
        servers.stop_all()


@pytest.fixture
def untouched(world) -> Iterator[None]:
    """The tests that use it prove route read-only: nothing under tmp_path
    (tables, homes, .forward, spool, mail store) changes or appears."""
    before = _snapshot(world.root)
    yield
    assert _snapshot(world.root) == before
    assert not any(world.spool.iterdir())
    assert not (world.root / "mail").exists() and not (world.root / "log").exists()


def test_help():
    result = subprocess.run([POSTILLION, "route", "--help"], capture_output=True, text=True,
                            timeout=RUN_TIMEOUT)
    assert result.returncode == 0
    assert "usage:" in result.stdout and "--src" in result.stdout and "--json" in result.stdout


def test_virtual_user_to_its_maildir_as_the_userbase_user(world, untouched):
    result = world.route("alice@example.test")
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    assert f'rule: {world.conf}:11: match from local for domain <domains> action "virtual"' in out
    assert "RCPT TO:<alice@example.test>: 250 2.1.5" in out
    assert "alice@example.test [action virtual]: virtual <vusers> key alice@example.test" in out
    assert f"vmail: userbase <users>: vmail 2000:2000 {world.root / 'vmail'}" in out
    maildir = world.root / "mail" / "example.test" / "alice" / "Maildir"
    assert f"maildir {maildir} as vmail(2000:2000)" in out


def test_alias_command_and_file_targets_and_a_forward(world, untouched):
    code, data = world.json("ops@localhost")
    assert code == 0, data
    assert data["rule"]["action"] == "local" and data["rule"]["line"] == 12
    top = data["expansion"][0]
    assert (top["kind"], top["value"]) == ("address", "ops@localhost")
    ops = top["children"][0]
    assert (ops["kind"], ops["value"], ops["detail"]) == ("user", "ops", "alias <aliases> key ops")
    # The alias targets, each under the user whose alias named it.
    kinds = [(c["kind"], c["value"]) for c in ops["children"]]
    assert kinds == [("delivery", "|/usr/bin/procmail -d ops"),
                     ("delivery", str(world.root / "log" / "ops.mbox")), ("user", "bob")]
    bob = ops["children"][2]
    forward = bob["children"][0]
    assert (forward["kind"], forward["value"]) == ("forward", str(world.root / "bob" / ".forward"))
    assert [c["value"] for c in forward["children"]] == [
        "bob", str(world.root / "log" / "bob.mbox")]
    by_method = {d["method"]: d for d in data["deliveries"]}
    # Files and commands an alias table names run as the queue user (the
    # daemon's own user when not root), a .forward's as its owner.
    queue_user = pwd.getpwnam("_postillion") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
    command = by_method["mda"]
    assert command["command"] == "|/usr/bin/procmail -d ops"
    assert command["argv"] == ["/usr/bin/procmail", "-d", "ops"]
    assert command["user"]["uid"] == queue_user.pw_uid
    files = [d for d in data["deliveries"] if d["method"] == "file"]
    assert [(f["path"], f["user"]["name"]) for f in files] == [
        (str(world.root / "log" / "ops.mbox"), queue_user.pw_name),
        (str(world.root / "log" / "bob.mbox"), "bob")]
    mbox = by_method["mbox"]
    assert (mbox["dest"], mbox["path"], mbox["user"]["uid"]) == ("bob@localhost", "/var/mail/bob",
                                                                 BOB_UID)
    text = world.route("ops@localhost").stdout
    assert 'mda "|/usr/bin/procmail -d ops" as ' in text
    assert f"mbox {world.root / 'log' / 'ops.mbox'} as {queue_user.pw_name}(" in text


def test_unknown_user_gets_the_sessions_550(world, untouched):
    result = world.route("nobody@example.test")
    assert result.returncode == 1
    assert "RCPT TO:<nobody@example.test>: 550 5.1.1 Invalid recipient: <nobody@example.test>" \
        in result.stdout
    assert "not in virtual <vusers>" in result.stdout
    # Known to the virtual table, unknown to the userbase: the same reply.
    code, data = world.json("ops@example.test")
    assert code == 1 and data["reply"]["line"].startswith("550 5.1.1")
    assert data["deliveries"] == []


def test_relay_shows_mx_hosts_in_order_with_tls_and_auth(world, untouched):
    code, data = world.json("someone@mx.test")
    assert code == 0, data
    (relay,) = data["deliveries"]
    plan = relay["relay"]
    assert (relay["method"], plan["target"], plan["smarthost"]) == ("relay", "mx.test", False)
    assert (plan["tls"], plan["verify"], plan["auth"], plan["port"]) == (
        "opportunistic", False, None, 25)
    hosts = plan["hosts"]
    assert hosts[0] == {"preference": 10, "name": "mx1.mx.test", "addresses": ["127.0.0.2", "::1"]}
    assert sorted((h["preference"], h["name"], tuple(h["addresses"])) for h in hosts[1:]) == [
        (20, "mx2.mx.test", ("127.0.0.3",)), (20, "mx3.mx.test", ("127.0.0.4",))]
    text = world.route("someone@mx.test").stdout
    assert text.index("10 mx1.mx.test: 127.0.0.2, ::1") < text.index("20 mx2.mx.test: 127.0.0.3")
    assert "tls: opportunistic" in text and "auth: none" in text
    # A smarthost over smtps with an AUTH label: its A/AAAA, TLS verified.
    code, data = world.json("someone@relay.test")
    assert code == 0, data
    plan = data["deliveries"][0]["relay"]
    assert (plan["target"], plan["smarthost"], plan["tls"], plan["verify"], plan["port"]) == (
        "smtps://smart@smarthost.test", True, "smtps", True, 465)
    assert plan["auth"] == {"table": "secrets", "label": "smart"}
    assert plan["hosts"] == [{"preference": 0, "name": "smarthost.test",
                              "addresses": ["127.0.0.9", "::1"]}]
    # A domain that does not exist: the bounce it would get, exit 1.
    code, data = world.json("someone@nxdomain.test")
    assert code == 1
    assert data["deliveries"][0]["error"]["line"] == "550 5.1.2 Domain does not exist"


def test_foreign_client_to_a_foreign_domain_is_relay_denied(world, untouched):
    result = world.route("--src", "192.0.2.7", "someone@mx.test")
    assert result.returncode == 1
    assert "rule: none matches" in result.stdout
    assert "550 5.7.1 Invalid recipient: <someone@mx.test>" in result.stdout
    # The same client to our domain matches the last rule.
    code, data = world.json("--src", "192.0.2.7", "alice@example.test")
    assert code == 0 and data["rule"]["line"] == 15
    assert data["session"] == {"src": "192.0.2.7", "local": False, "auth": None, "tls": False}


def test_json_has_the_documented_keys(world, untouched):
    code, data = world.json("--from", "<sender@example.test>", "list@example.test")
    assert code == 0
    assert set(data) == {"address", "sender", "rcpt", "session", "stage", "rule", "reply",
                         "reason", "expansion", "deliveries", "notes", "exit"}
    assert data["sender"] == "sender@example.test" and data["exit"] == 0
    assert set(data["rule"]) == {"file", "line", "text", "action"}
    assert set(data["reply"]) == {"code", "enhanced", "text", "line"}
    step = data["expansion"][0]
    assert set(step) == {"kind", "value", "action", "detail", "delivery", "error", "children"}
    assert step["children"][0]["kind"] == "include"
    for delivery in data["deliveries"]:
        assert set(delivery) == {"index", "dest", "action", "method", "exec", "user", "path",
                                 "command", "argv", "lmtp", "junk", "relay", "error"}


def test_bad_input_is_one_line_and_exit_2(world, untouched):
    result = world.route("--src", "not-an-ip", "alice@example.test")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "postillion: --src 'not-an-ip': not an IP address"
    # A malformed address gets the session's own syntax reply.
    result = world.route("a b@example.test")
    assert result.returncode == 1
    assert "RCPT refused: 501 5.1.3 Recipient address syntax error" in result.stdout
