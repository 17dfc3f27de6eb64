"""Commands: argv built without a shell, run as the user by a worker, and
what their exit says.  Run as root: the worker drops to nobody (65534)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pytest

from postillion.config.model import MdaOptions
from postillion.errors import PermFail, TempFail
from postillion.mda import command
from postillion.mda.agent import MdaAgent, MdaJob
from postillion.mda.format import FormatEnv
from postillion.table.values import Userinfo

NOBODY = 65534
PREFIX = b"Return-Path: <a@example.net>\r\nDelivered-To: bob@example.test\r\n"
MESSAGE = b"Subject: hi\r\n\r\nline one\r\nline two\r\n"
HOSTILE = "x;touch${IFS}pwned$(touch pwned2)`touch pwned3`|&<>@example.test"


def fenv(**changes) -> FormatEnv:
    base = FormatEnv(sender="a@example.net", rcpt="Bob+Tag@Example.Test", dest="bob@example.test",
                     username="bob", directory="/home/bob")
    return dataclasses.replace(base, **changes)


def test_the_command_is_split_before_anything_is_put_in():
    env = fenv(rcpt=HOSTILE)
    argv = command.build_argv('/usr/bin/deliver -r %{rcpt:raw} "two words" %{rcpt} %{dest.user}', env)
    assert argv == ["/usr/bin/deliver", "-r", HOSTILE, "two words",
                    "x;touch::IFS:pwned:(touch pwned2):touch pwned3:::<>@example.test", "bob"]


def test_a_wrapper_splices_the_command_in_place_of_its_mda_word():
    env = fenv()
    inner = "/usr/bin/procmail -d %{user.username}"
    assert command.build_argv(inner, env, "/usr/bin/env X=1 %{mda}") == \
        ["/usr/bin/env", "X=1", "/usr/bin/procmail", "-d", "bob"]
    assert command.build_argv(inner, env, '/bin/sh -c "exec %{mda}"') == \
        ["/bin/sh", "-c", "exec /usr/bin/procmail -d bob"]
    assert command.build_argv(inner, env, "/usr/bin/nice") == \
        ["/usr/bin/nice", "/usr/bin/procmail", "-d", "bob"]
    hostile = command.build_argv("/bin/deliver %{rcpt:raw}", fenv(rcpt="a'b;c@x"),
                                 '/bin/sh -c "exec %{mda}"')
    assert hostile == ["/bin/sh", "-c", "exec /bin/deliver 'a'\"'\"'b;c@x'"]


def test_the_environment_is_exactly_the_documented_one():
    env = command.environment("bob", "/home/bob", "", "Bob+Tag@Example.Test",
                              "bob@example.test", "tag")
    assert sorted(env) == sorted(command.ENVIRONMENT)
    assert env["SENDER"] == "" and env["EXTENSION"] == "tag" and env["LOCAL"] == "bob"
    assert env["DOMAIN"] == "example.test" and env["ORIGINAL_RECIPIENT"] == "Bob+Tag@Example.Test"


@pytest.mark.parametrize(("code", "all_read", "output", "expected"), [
    (0, True, b"", (0, "Delivered")),
    (0, False, b"", (75, "command exited before reading the whole message")),
    (75, True, b"try later\n", (75, "try later")),
    (71, True, b"", (75, "command exited with status 71")),
    (1, True, b"first\nthe reason\n\n", (1, "the reason")),
    (67, True, b"", (1, "command exited with status 67")),
    (-9, True, b"", (75, "command killed by signal SIGKILL")),
])
def test_exit_statuses(code, all_read, output, expected):
    assert command.outcome(code, all_read, output) == expected


# -- run by the worker, as nobody ----------------------------------------------

@pytest.fixture
def place():
    """A directory nobody can traverse, with a home for nobody in it."""
    assert os.geteuid() == 0, "run as root: the worker drops to nobody"
    root = Path(tempfile.mkdtemp(prefix="postillion-cmd-", dir="/tmp"))
    os.chmod(root, 0o755)
    home = root / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    (root / "message").write_bytes(MESSAGE)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def script(place: Path, name: str, body: str) -> str:
    path = place / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def job(place: Path, argv: list[str], uid: int = NOBODY) -> MdaJob:
    user = Userinfo("bob", uid, uid, str(place / "home"))
    environ = command.environment("bob", user.home, "a@example.net", "Bob+Tag@Example.Test",
                                  "bob@example.test", "tag")
    return MdaJob(message=place / "message", prefix=PREFIX, path_template=None, user=user,
                  sender="a@example.net", rcpt="Bob+Tag@Example.Test", dest="bob@example.test",
                  method="mda", argv=tuple(argv),
                  environ=tuple(f"{k}={v}" for k, v in environ.items()))


async def deliver(j: MdaJob, **options) -> None:
    agent = MdaAgent(MdaOptions(**options))
    try:
        await agent.deliver(j)
    finally:
        await agent.stop()


async def test_a_command_runs_as_the_user_in_home_with_the_message_and_nothing_else(place):
    home = place / "home"
    run = script(place, "record", 'cat > "$HOME/in"; id -u > out.uid; id -G > out.groups\n'
                                  'env > out.env; pwd > out.cwd; cat /proc/self/limits > out.limits\n'
                                  'printf "%s\\n" "$@" > out.argv; grep SigIgn /proc/self/status > out.sig\n')
    await deliver(job(place, [run, HOSTILE, "%{rcpt}"]), max_file_size=1 << 20, command_cpu=7)
    assert (home / "in").read_bytes() == (PREFIX + MESSAGE).replace(b"\r\n", b"\n")
    st = (home / "in").stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY, 0o600)      # umask 077
    assert (home / "out.uid").read_text().split() == [str(NOBODY)]
    assert (home / "out.groups").read_text().split() == [str(NOBODY)]     # no supplementary
    assert (home / "out.cwd").read_text().strip() == str(home)
    names = {line.split("=", 1)[0] for line in (home / "out.env").read_text().splitlines()}
    assert names - {"PWD", "SHLVL", "_", "OLDPWD"} == set(command.ENVIRONMENT)
    limits = (home / "out.limits").read_text()
    assert any(line.startswith("Max file size") and "1048576" in line for line in limits.splitlines())
    assert any(line.startswith("Max core file size") and " 0 " in line for line in limits.splitlines())
    assert any(line.startswith("Max cpu time") and " 7 " in line for line in limits.splitlines())
    ignored = int((home / "out.sig").read_text().split()[1], 16)
    assert not ignored & (1 << 1), "SIGINT is ignored in the command"    # bit 1: signal 2
    # The hostile address reached the command as one argument, untouched by
    # any shell: nothing it names was run.
    assert (home / "out.argv").read_text().splitlines() == [HOSTILE, "%{rcpt}"]
    assert not any(p.name.startswith("pwned") for p in [*home.iterdir(), *Path("/").iterdir()])


@pytest.mark.parametrize(("body", "kind", "reason"), [
    ("cat >/dev/null; echo 'mailbox full' >&2; exit 75\n", TempFail, "mailbox full"),
    ("cat >/dev/null; exit 71\n", TempFail, "command exited with status 71"),
    ("cat >/dev/null; echo noise; echo 'no such user' >&2; exit 67\n", PermFail, "no such user"),
    ("cat >/dev/null; kill -TERM $$\n", TempFail, "command killed by signal SIGTERM"),
])
async def test_exit_codes_decide(place, body, kind, reason):
    with pytest.raises(kind) as e:
        await deliver(job(place, [script(place, "s", body)]))
    assert e.value.reason == reason


async def test_a_command_that_stops_reading_early_has_not_delivered(place):
    (place / "message").write_bytes(b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 2000)
    with pytest.raises(TempFail) as e:
        await deliver(job(place, ["/usr/bin/head", "-c", "10"]))
    assert "before reading the whole message" in e.value.reason


async def test_a_missing_program_is_permanent(place):
    with pytest.raises(PermFail) as e:
        await deliver(job(place, [str(place / "no-such-program")]))
    assert "cannot run" in e.value.reason


async def test_a_timeout_kills_the_command_and_what_it_started(place):
    run = script(place, "slow", 'cat >/dev/null; (sleep 60; touch late) & echo $! > bg.pid; sleep 60\n')
    started = time.monotonic()
    with pytest.raises(TempFail) as e:
        await deliver(job(place, [run]), command_timeout=0.5)
    assert "timed out" in e.value.reason
    assert time.monotonic() - started < 10
    pid = int((place / "home" / "bg.pid").read_text())
    for _ in range(100):                 # the group was killed: the background child too
        if not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the command's background child survived the timeout")


async def test_uid_0_is_refused(place):
    with pytest.raises(TempFail) as e:
        await deliver(job(place, ["/bin/true"], uid=0))
    assert "refusing to deliver as root" in e.value.reason


async def test_max_session_per_user_is_honoured(place):
    run = script(place, "stamp", 'cat >/dev/null; date +%s.%N >> stamps; sleep 0.3; date +%s.%N >> stamps\n')
    agent = MdaAgent(MdaOptions(max_session=10, max_session_per_user=1))
    try:
        await asyncio.gather(*(agent.deliver(job(place, [run])) for _ in range(3)))
    finally:
        await agent.stop()
    stamps = [float(x) for x in (place / "home" / "stamps").read_text().split()]
    spans = sorted(zip(stamps[0::2], stamps[1::2]))
    assert len(spans) == 3
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), spans
