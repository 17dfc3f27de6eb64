"""The Maildir agent's paths, in-process: the non-root thread path, the worker
functions and the path expansion.  (The root path with privilege drop is
driven end to end by tests/e2e.)"""

from __future__ import annotations

import io
import os

import pytest

from postillion.errors import PermFail
from postillion.mda import maildir, worker
from postillion.mda.agent import MdaJob, _deliver_here, maildir_path
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
    status, reason = worker.deliver_maildir_bytes(str(blocker / "x" / "Maildir"), PREFIX, MESSAGE)
    if os.geteuid() == 0:   # a long-lived worker that did not drop privileges refuses
        assert (status, reason) == (worker.EX_TEMPFAIL, "refusing to deliver as root")
    else:
        assert status == worker.EX_PERM and "Not a directory" in reason


def test_worker_refuses_root(tmp_path):
    assert worker.deliver_maildir_as(0, 0, str(tmp_path / "m"), str(tmp_path), b"")[0] == \
        worker.EX_TEMPFAIL
    with pytest.raises(PermissionError):
        worker.become(0, 0)


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
