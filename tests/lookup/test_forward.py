"""Alias targets of every kind, `:include:`, `.forward` and its rules,
forward-only and expand-only: expansion at RCPT time, on real tables and files."""

from __future__ import annotations

import os

import pytest

from postillion.config import parse
from postillion.daemon import INTERNAL, open_tables
from postillion.errors import PermFail, TempFail
from postillion.lookup.expand import Expander
from postillion.lookup.forward import MAX_FORWARD_TARGETS
from postillion.rules import Ruleset
from postillion.table.values import BadValue, check_target

ALICE, BOB = 2001, 2002

CONFIG = """\
hostname mx.example.test
table aliases {{
    cmd = "|/usr/bin/archive --to %{{rcpt}}"
    file = /var/spool/archive.mbox
    dir = /var/spool/archive/
    inc = ":include:{root}/list"
    missing = ":include:{root}/no-such-list"
    err = "error:550 5.7.1 Not here"
    dup = "alice, alice, |/bin/cat, |/bin/cat, inc"
    ping = pong
    pong = ping
}}
table users {{
    alice = "{alice}:{alice}:{root}/alice"
    bob = "{bob}:{bob}:{root}/bob"
}}
action "local" maildir alias <aliases> userbase <users>
action "fwd" forward-only userbase <users>
action "exp" expand-only alias <aliases> userbase <users>
action "out" relay
match from any for domain example.test action "local"
match from any for domain fwd.example.test action "fwd"
match from any for domain exp.example.test action "exp"
match from local for any action "out"
"""


@pytest.fixture
async def world(tmp_path):
    assert os.geteuid() == 0, "run as root: .forward files belong to their users"
    for name, uid in (("alice", ALICE), ("bob", BOB)):
        (tmp_path / name).mkdir()
        os.chown(tmp_path / name, uid, uid)
    (tmp_path / "list").write_text("# the list\nalice\nbob, |/bin/cat\n")
    config = parse(CONFIG.format(root=tmp_path, alice=ALICE, bob=BOB), str(tmp_path / "smtpd.conf"))
    tables = await open_tables(config)
    ruleset = Ruleset(config, tables)

    async def route(address):
        return await ruleset.match(INTERNAL, "", address)

    expander = Expander(tables, config.limits, route)

    async def expand(rcpt):
        action = await ruleset.match(INTERNAL, "", rcpt)
        return sorted((d.user, d.dest, d.exec, d.agent) for d in await expander.expand(rcpt, action))

    yield tmp_path, expand
    for t in tables.values():
        await t.close()


def forward(home, text, uid, mode=0o644):
    path = home / ".forward"
    path.write_text(text)
    os.chown(path, uid, uid)
    path.chmod(mode)
    return path


async def test_alias_targets_of_every_kind(world):
    root, expand = world
    assert await expand("cmd@example.test") == [
        ("", "cmd@example.test", "|/usr/bin/archive --to %{rcpt}", "mda")]
    assert await expand("file@example.test") == [
        ("", "file@example.test", "/var/spool/archive.mbox", "mda")]
    assert await expand("dir@example.test") == [
        ("", "dir@example.test", "/var/spool/archive/", "mda")]
    assert await expand("inc@example.test") == [
        ("", "inc@example.test", "|/bin/cat", "mda"),
        ("alice", "alice@example.test", "", "mda"), ("bob", "bob@example.test", "", "mda")]
    with pytest.raises(PermFail) as e:
        await expand("err@example.test")
    assert str(e.value.reply) == "550 5.7.1 Not here"
    with pytest.raises(TempFail) as e:
        await expand("missing@example.test")
    assert (e.value.reply.code, e.value.reply.enhanced) == (451, "4.2.4")
    assert "no-such-list" in e.value.reason


async def test_a_delivery_reached_twice_is_made_once_and_a_loop_is_refused(world):
    root, expand = world
    assert await expand("dup@example.test") == [
        ("", "dup@example.test", "|/bin/cat", "mda"),
        ("alice", "alice@example.test", "", "mda"), ("bob", "bob@example.test", "", "mda")]
    with pytest.raises(PermFail) as e:
        await expand("ping@example.test")
    assert e.value.reply.enhanced == "5.2.4"


async def test_a_forward_replaces_the_mailbox_and_runs_as_its_user(world):
    root, expand = world
    forward(root / "alice", "# keep a copy, and more\n\\alice, bob@example.test\n"
            '"|/usr/bin/vacation alice"\n' f"{root}/alice/copy.mbox\n", ALICE)
    assert await expand("alice@example.test") == [
        ("alice", "alice@example.test", "", "mda"),                  # \alice: the loop guard
        ("alice", "alice@example.test", f"{root}/alice/copy.mbox", "mda"),
        ("alice", "alice@example.test", "|/usr/bin/vacation alice", "mda"),
        ("bob", "bob@example.test", "", "mda")]
    # An address that comes back to its own user is the loop guard too.
    forward(root / "bob", "bob@example.test, remote@example.net\n", BOB)
    assert await expand("bob@example.test") == [
        ("", "remote@example.net", "", "mta"), ("bob", "bob@example.test", "", "mda")]
    # An empty one is no .forward.
    forward(root / "bob", "\n  \n", BOB)
    assert await expand("bob@example.test") == [("bob", "bob@example.test", "", "mda")]


@pytest.mark.parametrize("case", ["group-writable", "world-writable", "not-owned", "symlink",
                                  "too-large", "too-many", "include", "malformed", "fifo"])
async def test_an_unusable_forward_is_temporary(world, case):
    root, expand = world
    home = root / "alice"
    if case == "group-writable":
        forward(home, "bob\n", ALICE, 0o664)
    elif case == "world-writable":
        forward(home, "bob\n", ALICE, 0o646)
    elif case == "not-owned":
        forward(home, "bob\n", BOB)
    elif case == "symlink":
        target = forward(root / "bob", "bob\n", ALICE)
        os.symlink(target, home / ".forward")
    elif case == "too-large":
        forward(home, "bob\n" + "#" * 4092 + "\n", ALICE)
    elif case == "too-many":
        forward(home, "bob\n" * (MAX_FORWARD_TARGETS + 1), ALICE)
    elif case == "include":
        forward(home, f":include:{root}/list\n", ALICE)
    elif case == "malformed":
        forward(home, '"|/bin/sh -c id;id"\n', ALICE)
    elif case == "fifo":
        os.mkfifo(home / ".forward")
        os.chown(home / ".forward", ALICE, ALICE)
    with pytest.raises(TempFail) as e:
        await expand("alice@example.test")
    assert (e.value.reply.code, e.value.reply.enhanced) == (451, "4.2.4")
    assert ".forward" in e.value.reason


async def test_forward_only_needs_a_forward_without_files_or_commands(world):
    root, expand = world
    with pytest.raises(TempFail):
        await expand("alice@fwd.example.test")                       # no .forward
    forward(root / "alice", "remote@example.net\n", ALICE)
    assert await expand("alice@fwd.example.test") == [("", "remote@example.net", "", "mta")]
    forward(root / "alice", "remote@example.net, |/bin/cat\n", ALICE)
    with pytest.raises(TempFail) as e:
        await expand("alice@fwd.example.test")
    assert "forward-only" in e.value.reason


async def test_expand_only_delivers_only_what_aliases_and_forwards_name(world):
    root, expand = world
    with pytest.raises(PermFail) as e:
        await expand("alice@exp.example.test")                       # nothing names a method
    assert e.value.reply.enhanced == "5.2.4"
    assert await expand("cmd@exp.example.test") == [
        ("", "cmd@exp.example.test", "|/usr/bin/archive --to %{rcpt}", "mda")]
    forward(root / "alice", "|/usr/bin/procmail\n", ALICE)
    assert await expand("alice@exp.example.test") == [
        ("alice", "alice@exp.example.test", "|/usr/bin/procmail", "mda")]


def test_a_command_target_with_shell_syntax_is_malformed():
    for target in ("|/bin/x a;b", "|/bin/x $(id)", "|/bin/x `id`", "|/bin/x > /etc/passwd",
                   '|/bin/x "unclosed'):
        with pytest.raises(BadValue):
            check_target(target)
    check_target('|/bin/x "a;b" \'$(id)\' $HOME')
