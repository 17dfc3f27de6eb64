"""Local delivery end to end, as root with real system users: alias
targets of every kind, `.forward`, `mda` commands (never a shell), mbox,
a full disk, a uid-0 user refused -- the files owned by whom they should be.

The `postillion run` tests go through the whole process family: the smtp
process asks the parent for a `.forward`, the queue process asks it to
deliver, a worker runs as the user.  The mbox tests run the daemon in this
process to point `mbox_directory` at a directory of their own.
"""

from __future__ import annotations

import dataclasses
import mailbox
import os
import pwd
import smtplib
import time
from pathlib import Path

import pytest

from postillion.config import load
from postillion.queue.layout import TMP_SUFFIX
from tests.e2e import inproc
from tests.tmpfs import small_tmpfs
from tests.sysuser import home_user

QUEUE_USER = "_postillion"


def wait_for(what, check, timeout: float = 20.0, log=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout}s\n{log()}")


def script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


CONFIG = """\
table aliases file:{root}/aliases
table vusers {{ evil = "0:0:{root}/evil" }}
table vmap {{ "@virt.example.test" = evil }}
listen on {host} port {port} hostname mx.example.test
action "local" maildir alias <aliases>
mda wrapper "env" "/usr/bin/env WRAPPED=yes %{{mda}}"
action "cmd" mda "{bin}/record mda %{{rcpt:raw}} %{{rcpt}}" wrapper "env"
action "virt" maildir virtual <vmap> userbase <vusers>
match from any for domain example.test action "local"
match from any for domain cmd.example.test action "cmd"
match from any for domain virt.example.test action "virt"
"""

#: Writes what it was run as, with, and given, under out/NAME.UID.PID.*, and
#: .done last (a command may run twice: the tests read whole runs only).
RECORD = """\
out={out}/$1.$(id -u).$$
{{ echo "uid=$(id -u)"; echo "groups=$(id -G)"; echo "pwd=$(pwd)"; }} > "$out.id"
printf '%s\\n' "$@" > "$out.argv"
env > "$out.env"
cat > "$out.in"
touch "$out.done"
"""


def runs(out: Path, name: str, uid: int) -> list[Path]:
    """The finished runs of `record NAME` as uid: their common path prefixes."""
    return [Path(str(p)[:-len(".done")]) for p in sorted(out.glob(f"{name}.{uid}.*.done"))]


def read(run: Path, what: str) -> str:
    return Path(f"{run}.{what}").read_text()


@pytest.fixture
def as_root():
    assert os.geteuid() == 0, "local delivery runs as real users: run these tests as root"
    return pwd.getpwnam(QUEUE_USER)   # make test creates it (Makefile: system-user)


def test_every_target_runs_as_whom_it_should(daemon, as_root):
    root = daemon.root
    queue_uid, queue_gid = as_root.pw_uid, as_root.pw_gid
    bin_ = root / "bin"
    bin_.mkdir(mode=0o755)
    out = root / "out"
    out.mkdir()
    out.chmod(0o1777)
    record = script(bin_ / "record", RECORD.format(out=out))
    closed = script(bin_ / "closed", "cat >/dev/null; echo noise; echo 'the list is closed' >&2; exit 67\n")
    for name in ("filed", "boxed"):
        (root / name).mkdir(mode=0o700)
        os.chown(root / name, queue_uid, queue_gid)
    with home_user(root) as (good, uid, gid, home), home_user(root) as (bad, bad_uid, _, bad_home):
        (root / "aliases").write_text(
            f'archive: "|{record} archive"\nfiled: {root}/filed/archive.mbox\n'
            f"boxed: {root}/boxed/\nclosed: |{closed}\n")
        forward = home / ".forward"
        forward.write_text(f'\\{good}\n"|{record} forward"\n')
        os.chown(forward, uid, gid)
        bad_forward = bad_home / ".forward"
        bad_forward.write_text(f"{good}\n")
        os.chown(bad_forward, bad_uid, bad_uid)
        bad_forward.chmod(0o664)                       # group-writable: not used
        daemon.config.write_text(CONFIG.format(root=root, bin=bin_, host=daemon.host,
                                               port=daemon.port))
        daemon.start()
        hostile = f"{good}+a`b$c|d&e{{x}}~@cmd.example.test"
        rcpts = ["archive@example.test", "filed@example.test", "boxed@example.test",
                 "closed@example.test", f"{good}@example.test", f"{bad}@example.test",
                 hostile, "anyone@virt.example.test"]
        with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as client:
            refused = client.sendmail("", rcpts, b"Subject: targets\r\n\r\nFrom the start\r\n")
        # The group-writable .forward: a temporary failure at RCPT, nothing else.
        assert refused == {f"{bad}@example.test": (451, b"4.2.4 Mailing list expansion problem: "
                                                         + f"<{bad}@example.test>".encode())}
        log = daemon.wait_log("writable by group or others")
        assert "smtp expand-error" in log

        def has(path: Path) -> bool:
            return path.exists() and path.stat().st_size > 0

        # |command from the alias table: as the queue user, no other groups.
        [run] = wait_for("the alias command", lambda: runs(out, "archive", queue_uid), log=daemon.log)
        assert read(run, "id").splitlines() == [f"uid={queue_uid}", f"groups={queue_gid}", "pwd=/"]
        fed = Path(f"{run}.in").read_bytes()
        assert fed.startswith(b"Return-Path: <>\nDelivered-To: archive@example.test\nReceived: ")
        assert fed.endswith(b"\n\nFrom the start\n")
        env = dict(line.split("=", 1) for line in read(run, "env").splitlines())
        assert env["RECIPIENT"] == "archive@example.test" and env["SENDER"] == ""
        assert env["USER"] == QUEUE_USER and "PYTHONSAFEPATH" not in env
        # /path: an mbox file, as the queue user; /path/: a Maildir, as the queue user.
        archive = root / "filed" / "archive.mbox"
        wait_for("the alias mbox", lambda: has(archive), log=daemon.log)
        assert archive.stat().st_uid == queue_uid
        [message] = list(mailbox.mbox(str(archive)))
        assert message.get_payload() == ">From the start\n"
        boxed = wait_for("the alias Maildir", lambda: list((root / "boxed" / "new").glob("*"))
                         if (root / "boxed" / "new").exists() else [], log=daemon.log)
        assert boxed[0].stat().st_uid == queue_uid
        # The .forward: a copy in the mailbox (\user) and its command, both as the user.
        maildir = wait_for("the user's Maildir", lambda: list((home / "Maildir" / "new").glob("*"))
                           if (home / "Maildir" / "new").exists() else [], log=daemon.log)
        assert {p.stat().st_uid for p in maildir} == {uid}
        # (good@example.test and the hostile address each run it: two runs.)
        forwarded = wait_for("the .forward command", lambda: len(runs(out, "forward", uid)) == 2
                             and runs(out, "forward", uid), log=daemon.log)
        for run in forwarded:
            assert read(run, "id").splitlines() == [f"uid={uid}", f"groups={gid}", f"pwd={home}"]
        # The mda action: the hostile address is one argument, as it came.
        [run] = wait_for("the mda command", lambda: runs(out, "mda", uid), log=daemon.log)
        argv = read(run, "argv").splitlines()
        assert argv == ["mda", hostile, f"{good}+a:b:c:d:e:x::@cmd.example.test"]
        assert "WRAPPED=yes" in read(run, "env").splitlines()      # the wrapper ran it
        assert not list(Path("/").glob("pwned*")) and not list(root.glob("pwned*"))
        # A command's failure is permanent, with its last line; uid 0 is refused.
        log = daemon.wait_log('stat="the list is closed"')
        assert "to=<closed@example.test>" in log and "result=PermFail" in log
        log = daemon.wait_log("refusing to deliver as root for user evil")
        assert "result=TempFail" in log
        daemon.stop()


MBOX_CONFIG = """\
table domains sqlite:{backend}
table virtuals sqlite:{backend}
table users sqlite:{backend}
listen on {host} port {port} hostname mx.example.test
action "boxes" mbox virtual <virtuals> userbase <users>
match from any for domain <domains> action "boxes"
"""


def start_mbox(daemon, spool_dir: Path) -> inproc.InProcess:
    daemon.config.write_text(MBOX_CONFIG.format(backend=daemon.root / "sqlite.conf",
                                                host=daemon.host, port=daemon.port))
    config = load(daemon.config)
    config = dataclasses.replace(config, mda=dataclasses.replace(config.mda,
                                                                 mbox_directory=str(spool_dir)))
    proc = inproc.InProcess(fixture=daemon, ca=None)
    inproc.start(proc, config)
    return proc


def send(daemon, body: bytes) -> None:
    with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as client:
        client.sendmail("carol@example.net", ["alice@example.test"], body)


def test_mbox_delivers_as_the_user_into_the_mail_spool(daemon, as_root):
    spool_dir = daemon.root / "var-mail"
    spool_dir.mkdir(mode=0o755)              # root's, as /var/mail: the user cannot create in it
    proc = start_mbox(daemon, spool_dir)
    try:
        send(daemon, b"Subject: one\r\n\r\nFrom the start, a line to quote\r\n")
        send(daemon, b"Subject: two\r\n\r\nsecond\r\n")
        # Back from a .forward elsewhere that sent it on: a loop, refused for good.
        send(daemon, b"Delivered-To: alice@example.test\r\nSubject: again\r\n\r\nthird\r\n")
        box = spool_dir / "alice"
        log = proc.wait_log("Loop detected")
        assert "result=PermFail" in log
        wait_for("two messages", lambda: box.exists() and len(list(mailbox.mbox(str(box)))) == 2,
                 log=proc.log)
    finally:
        inproc.stop(proc)
    st = box.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (65534, 0o600)
    first, second = list(mailbox.mbox(str(box)))
    assert first.get_from().startswith("carol@example.net ")
    assert first["Delivered-To"] == "alice@example.test" and second["Subject"] == "two"
    assert first.get_payload() == ">From the start, a line to quote\n"
    assert sorted(p.name for p in spool_dir.iterdir()) == ["alice"]       # the dot-lock is gone


@pytest.fixture
def full_spool(daemon):
    """A 64 KiB tmpfs as the mail spool."""
    with small_tmpfs(daemon.root / "small-spool") as mount:
        yield mount


def test_a_full_disk_keeps_the_mailbox_and_the_envelope(daemon, as_root, full_spool):
    proc = start_mbox(daemon, full_spool)
    try:
        send(daemon, b"Subject: fits\r\n\r\nsmall\r\n")
        proc.wait_log("result=Ok")
        box = full_spool / "alice"
        before = box.read_bytes()
        send(daemon, b"Subject: too big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 100)
        log = proc.wait_log("No space left on device")
        assert "result=TempFail" in log
        assert box.read_bytes() == before
        assert [m["Subject"] for m in mailbox.mbox(str(box))] == ["fits"]
        # Still queued: one envelope file (its rewrite after the TempFail may
        # be caught half-way, as a `.tmp` beside it).
        assert len([p for p in proc.queued() if p.name != "message" and
                    not p.name.endswith(TMP_SUFFIX)]) == 1
    finally:
        inproc.stop(proc)
