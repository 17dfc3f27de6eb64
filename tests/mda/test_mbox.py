"""mbox delivery: what mailbox readers see, the locks, and a full disk."""

from __future__ import annotations

import io
import mailbox
import os
import subprocess
import sys
import time

import pytest

from tests.tmpfs import small_tmpfs

from postillion.mda import mbox

PREFIX = b"Return-Path: <a@example.net>\r\nDelivered-To: bob@example.test\r\n"
MESSAGE = (b"Subject: quoting\r\n\r\nFrom here the line starts with From.\r\n"
           b">From already quoted once\r\n>>From twice\r\nFromage is no separator\r\n"
           b"last line without a line end")


def test_python_mailbox_reads_what_we_append(tmp_path):
    path = tmp_path / "bob"
    mbox.deliver_file(str(path), "a@example.net", PREFIX, io.BytesIO(MESSAGE))
    mbox.deliver_file(str(path), "", PREFIX, io.BytesIO(b"Subject: second\r\n\r\nbody\r\n"))
    box = mailbox.mbox(str(path))
    first, second = list(box)
    assert first["Subject"] == "quoting" and second["Subject"] == "second"
    assert first.get_from().startswith("a@example.net ")
    assert second.get_from().startswith("MAILER-DAEMON ")
    body = first.get_payload()
    assert ">From here the line starts with From." in body
    assert ">>From already quoted once" in body and ">>>From twice" in body
    assert "\nFromage is no separator" in body
    assert first["Delivered-To"] == "bob@example.test"
    raw = path.read_bytes()
    assert b"\r" not in raw
    assert raw.endswith(b"body\n\n")
    assert b"last line without a line end\n\nFrom " in raw    # line closed, blank line, next
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_quoting_does_not_depend_on_where_chunks_split():
    data = b"x\nFrom a\n>From b\n>>>>From c\nFro\nFrom\n>>From z"
    whole = b"".join(_feed([data]))
    assert whole == b"x\n>From a\n>>From b\n>>>>>From c\nFro\nFrom\n>>>From z\n\n"
    for i in range(len(data)):
        for j in range(i, len(data)):
            assert b"".join(_feed([data[:i], data[i:j], data[j:]])) == whole, (i, j)


def _feed(pieces):
    quoter = mbox._Quoter()
    for piece in pieces:
        yield quoter.feed(piece)
    yield quoter.end()


def test_a_mailbox_that_lacks_its_final_blank_line_still_gets_a_separate_message(tmp_path):
    path = tmp_path / "bob"
    path.write_bytes(b"From x@y Thu Jan  1 00:00:00 2026\nSubject: old\n\nno newline at end")
    mbox.deliver_file(str(path), "a@example.net", PREFIX, io.BytesIO(b"Subject: new\r\n\r\nhi\r\n"))
    assert [m["Subject"] for m in mailbox.mbox(str(path))] == ["old", "new"]


def test_dev_null_discards(tmp_path):
    mbox.deliver_file("/dev/null", "a@example.net", PREFIX, io.BytesIO(MESSAGE))


def test_a_held_dotlock_is_waited_for_then_busy_and_a_stale_one_removed(tmp_path):
    dirfd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        (tmp_path / "bob.lock").write_text("123\n")
        started = time.monotonic()
        with pytest.raises(mbox.MailboxBusy):
            mbox.dotlock(dirfd, "bob", wait=0.3)
        assert 0.3 <= time.monotonic() - started < 5
        old = time.time() - mbox.STALE_LOCK - 10
        os.utime(tmp_path / "bob.lock", (old, old))
        lock = mbox.dotlock(dirfd, "bob", wait=0.3)       # a crashed writer's: removed
        assert lock == "bob.lock" and (tmp_path / "bob.lock").read_text() == f"{os.getpid()}\n"
        mbox.release(dirfd, lock)
        assert not (tmp_path / "bob.lock").exists()
    finally:
        os.close(dirfd)


def test_an_fcntl_lock_held_elsewhere_makes_the_append_wait_then_fail(tmp_path):
    path = tmp_path / "bob"
    path.write_bytes(b"")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(path)!r}, os.O_WRONLY)\n"
         "fcntl.lockf(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(30)\n"],
        stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"locked\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            with pytest.raises(mbox.MailboxBusy):
                mbox.append(fd, "a@example.net", PREFIX, io.BytesIO(MESSAGE), wait=0.3)
        finally:
            os.close(fd)
    finally:
        holder.kill()
        holder.wait()
    assert path.read_bytes() == b""


def test_spool_mailbox_is_created_for_its_user_and_must_stay_theirs(tmp_path):
    assert os.geteuid() == 0, "run as root: the mail spool is root's"
    dirfd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        fd = mbox.open_spool_mailbox(dirfd, "bob", 65534, 65534)
        os.close(fd)
        st = (tmp_path / "bob").stat()
        assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o777)) == (65534, 65534, "0o600")
        os.close(mbox.open_spool_mailbox(dirfd, "bob", 65534, 65534))   # exists: opened
        with pytest.raises(PermissionError):                            # someone else's
            mbox.open_spool_mailbox(dirfd, "bob", 1234, 1234)
        os.symlink("/etc/passwd", tmp_path / "eve")
        with pytest.raises(OSError):                                    # never through a link
            mbox.open_spool_mailbox(dirfd, "eve", 65534, 65534)
        os.link(tmp_path / "bob", tmp_path / "mallory")
        with pytest.raises(OSError):                                    # nor a second name
            mbox.open_spool_mailbox(dirfd, "mallory", 65534, 65534)
    finally:
        os.close(dirfd)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs: writes beyond it fail with ENOSPC."""
    with small_tmpfs(tmp_path / "small") as mount:
        yield mount


def test_a_full_disk_leaves_the_mailbox_as_it_was(small_disk):
    path = small_disk / "bob"
    mbox.deliver_file(str(path), "a@example.net", PREFIX, io.BytesIO(b"Subject: kept\r\n\r\nhi\r\n"))
    before = path.read_bytes()
    big = b"Subject: too big\r\n\r\n" + b"x" * 998 + b"\r\n" * 1 + (b"y" * 998 + b"\r\n") * 200
    with pytest.raises(OSError) as e:
        mbox.deliver_file(str(path), "a@example.net", PREFIX, io.BytesIO(big))
    assert e.value.errno == 28   # ENOSPC
    assert path.read_bytes() == before
    assert [m["Subject"] for m in mailbox.mbox(str(path))] == ["kept"]
    assert sorted(p.name for p in small_disk.iterdir()) == ["bob"]     # no lock left


def test_from_line_has_no_blanks_in_the_sender():
    line = mbox.from_line("a b\tc@example.net", 0.0)
    assert line.startswith(b"From a_b_c@example.net ") and line.endswith(b"\n")
    assert len(line.split()) == 7
