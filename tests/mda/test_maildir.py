"""The Maildir agent's paths, in-process: the non-root thread path, the worker
functions and the path expansion.  (The root path with privilege drop is
driven end to end by tests/e2e.)"""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

import pytest

from postillion.errors import PermFail
from postillion.mda import maildir, worker
from postillion.mda.agent import MdaAgent, MdaJob, _deliver_here, maildir_path, open_anchor
from postillion.mda.format import FormatEnv, FormatError, expand
from postillion.table.values import Userinfo

MESSAGE = b"Subject: hi\r\n\r\nline one\r\n.dot line\r\n"
PREFIX = b"Return-Path: <a@example.net>\r\nDelivered-To: bob@example.test\r\n"


def job(tmp_path, template=None, home=None) -> MdaJob:
    message = tmp_path / "message"
    message.write_bytes(MESSAGE)
    user = Userinfo("bob", os.getuid(), os.getgid(), str(home or tmp_path / "home" / "bob"))
    return MdaJob(message=message, prefix=PREFIX, path_template=template, user=user,
                  sender="a@example.net", rcpt="Bob+Lists@Example.Test", dest="bob@example.test")


def test_thread_path_writes_new_with_lf_line_ends(tmp_path):
    j = job(tmp_path)
    root = maildir_path(j)
    _deliver_here(root, j)
    [path] = list((root / "new").iterdir())
    assert path.read_bytes() == (PREFIX + MESSAGE).replace(b"\r\n", b"\n")
    assert list((root / "tmp").iterdir()) == []
    assert {p.name for p in root.iterdir()} == {"cur", "new", "tmp"}
    for directory in (root, root.parent):   # the Maildir and the home it created
        assert oct(directory.stat().st_mode & 0o777) == "0o700"


def test_crlf_split_across_reads_is_still_one_line_end(tmp_path):
    class Trickle(io.RawIOBase):
        def __init__(self, data):
            self.data = data

        def read(self, n=-1):
            out, self.data = self.data[:3], self.data[3:]   # splits every CRLF somewhere
            return out

    root = tmp_path / "Maildir"
    body = b"ab\r\ncd\r\r\nef\r\n"
    maildir.deliver(root, b"", Trickle(body))
    [path] = list((root / "new").iterdir())
    assert path.read_bytes() == body.replace(b"\r\n", b"\n")


def test_unwritable_home_is_temporary_a_file_in_the_way_permanent(tmp_path):
    blocker = tmp_path / "home"
    blocker.write_text("not a directory")
    with pytest.raises(PermFail):          # ENOTDIR: no retry will fix it
        j = job(tmp_path, home=blocker / "bob")
        _deliver_here(maildir_path(j), j)


def test_worker_refuses_root(tmp_path):
    message = tmp_path / "m"
    message.write_bytes(MESSAGE)
    fd = os.open(message, os.O_RDONLY)
    try:
        if os.geteuid() == 0:
            assert worker.deliver_job(str(tmp_path / "Maildir"), b"", fd, None) == \
                (worker.EX_TEMPFAIL, "refusing to deliver as root")
    finally:
        os.close(fd)
    assert worker.main(["0", str(os.getpid()), "0", "0"]) == worker.EX_TEMPFAIL


def test_anchor_stops_at_the_first_directory_root_does_not_own(tmp_path):
    private = tmp_path / "private"           # root's, 0700: nobody cannot enter
    store = private / "var" / "mail"
    store.mkdir(parents=True)
    os.chmod(private, 0o700)
    os.chown(store, 65534, 65534)
    fd, rel = open_anchor(store / "alice" / "Maildir")
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(private / "var"))
        assert rel == "mail/alice/Maildir"
    finally:
        os.close(fd)


async def test_worker_process_delivers_as_the_user_under_a_private_directory(tmp_path):
    """A Maildir below a 0700 root directory (a checkout in /root): the
    worker runs as nobody, yet delivers, and never as root."""
    private = tmp_path / "private"
    home = private / "var" / "mail" / "bob"
    home.mkdir(parents=True)
    os.chmod(private, 0o700)
    os.chown(home, 65534, 65534)
    j = job(tmp_path, home=home)
    j = MdaJob(message=j.message, prefix=PREFIX, path_template=None,
               user=Userinfo("bob", 65534, 65534, str(home)), sender=j.sender, rcpt=j.rcpt,
               dest=j.dest)
    agent = MdaAgent()
    try:
        await agent.deliver(j)
        [pid] = agent.worker_pids()
        status = Path(f"/proc/{pid}/status").read_text()
        assert "\nUid:\t65534\t65534\t65534\t65534\n" in status
        groups = next(line for line in status.splitlines() if line.startswith("Groups:"))
        assert groups.split() == ["Groups:"]
    finally:
        await agent.stop()
    [path] = list((home / "Maildir" / "new").iterdir())
    assert path.read_bytes() == (PREFIX + MESSAGE).replace(b"\r\n", b"\n")
    assert path.stat().st_uid == 65534


def test_path_templates_cannot_leave_their_directory(tmp_path):
    env = FormatEnv(sender="a@example.net", rcpt="../../etc/x@example.test",
                    dest="../../etc/x@example.test", username="bob", directory="/home/bob")
    assert expand("/var/vmail/%{dest.domain}/%{dest.user}", env) == "/var/vmail/example.test/..:..:etc:x"
    assert expand("~/Maildir", env) == "/home/bob/Maildir"
    env2 = FormatEnv(sender="", rcpt="Bob+Lists@Example.Test", dest="bob@example.test",
                     username="bob", directory="/home/bob")
    assert expand("/m/%{rcpt.user:lowercase|strip}".replace("|", ":"), env2) == "/m/bob"
    assert expand("/m/%{rcpt.domain[0:3]}", env2) == "/m/Exa"
    with pytest.raises(FormatError):
        expand("/m/%{nosuch}", env2)


def test_relative_expanded_path_is_permanent(tmp_path):
    with pytest.raises(PermFail):
        maildir_path(job(tmp_path, template="Maildir"))


def test_a_repeated_delivery_of_one_envelope_replaces_its_first_copy(tmp_path):
    """The daemon died after the rename, before removing the envelope: the
    retry must not leave the message twice in new/."""
    root = tmp_path / "Maildir"
    name = maildir.stable_name(0x1234567800000001, 1765000000.5, "mx.example.org")
    assert name == "1765000000.E1234567800000001.mx.example.org"
    first = maildir.deliver(root, PREFIX, io.BytesIO(MESSAGE), name)
    (root / "tmp" / name).write_bytes(b"half of an attempt that died")   # left by a crash
    again = maildir.deliver(root, PREFIX, io.BytesIO(MESSAGE), name)
    assert first == again and [p.name for p in (root / "new").iterdir()] == [name]
    assert again.read_bytes() == (PREFIX + MESSAGE).replace(b"\r\n", b"\n")
    assert list((root / "tmp").iterdir()) == []
    other = maildir.deliver(root, PREFIX, io.BytesIO(MESSAGE),
                            maildir.stable_name(0x1234567800000002, 1765000000.5, "mx.example.org"))
    assert other != first and len(list((root / "new").iterdir())) == 2


def test_a_stable_name_is_one_path_component(tmp_path):
    assert "/" not in maildir.stable_name(1 << 32 | 1, 1.0, "a/b:c")
    with pytest.raises(ValueError):
        maildir.deliver(tmp_path / "Maildir", b"", io.BytesIO(b"x"), "../escape")


def test_the_worker_job_carries_the_name(tmp_path):
    job = worker.decode_job(worker.encode_job("maildir", PREFIX, root="Maildir", name="1.Eab.mx"))
    assert (job["method"], job["root"], job["prefix"].encode(), job["name"]) == \
        ("maildir", "Maildir", PREFIX, "1.Eab.mx")


async def test_busy_workers_wait_for_the_next_job_instead_of_exiting(tmp_path):
    """Under load the same workers serve one batch after another: a worker
    is an interpreter, and starting one per delivery cost several times the
    delivery (a bench found 70 started in 12 s)."""
    home = tmp_path / "home" / "bob"
    home.mkdir(parents=True)
    os.chown(home, 65534, 65534)
    j = job(tmp_path, home=home)
    j = MdaJob(message=j.message, prefix=PREFIX, path_template=None,
               user=Userinfo("bob", 65534, 65534, str(home)), sender=j.sender, rcpt=j.rcpt,
               dest=j.dest)
    agent = MdaAgent()
    try:
        await asyncio.gather(*(agent.deliver(j) for _ in range(5)))
        first = set(agent.worker_pids())
        assert len(first) > 2                        # more than KEEP_IDLE were needed
        for _ in range(3):
            await asyncio.gather(*(agent.deliver(j) for _ in range(5)))
        assert set(agent.worker_pids()) == first     # the same ones, none started again
    finally:
        await agent.stop()
    assert len(list((home / "Maildir" / "new").iterdir())) == 20
