"""mbox delivery (`action ... mbox`, an alias target `/abs/path`; docs/configuration.md).

One message is appended as mbox readers (mutt, mailx, Dovecot's mbox, Python's
`mailbox.mbox`) expect it: a `From SENDER DATE` line (the null sender is
`MAILER-DAEMON`), the message with LF line ends, every line that matches
`>*From ` quoted with one more `>` (mboxrd, so a reader can undo it), and a
blank line at the end.

Locking is what those readers take: a dot-lock (`NAME.lock` beside the
mailbox, created with O_EXCL; one older than `STALE_LOCK` is a crashed
writer's and is removed) and then an fcntl lock on the mailbox itself.
Neither is waited for longer than `LOCK_WAIT`; a mailbox that stays locked
is a temporary failure.

A failed write (a full disk, a quota, the file size limit) truncates the
mailbox back to the size it had before: the mailbox is left as it was and
the envelope stays queued, to be tried again (a temporary failure).  A
successful append is fsynced before the agent reports it.

The system mailboxes (`/var/mail/USER`, `MdaOptions.mbox_directory`) live
in a directory only root (and group mail) may write: the daemon creates a
missing mailbox and takes the dot-lock as root (`open_spool_mailbox`),
then a worker running as the recipient appends through the descriptor it
is handed.  A file named by an alias target is opened, locked and written
entirely as the user the target runs as.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import time
from collections.abc import Iterable
from typing import BinaryIO, Final

from postillion.mda.format import NULL_SENDER
from postillion.mda.stream import lf_chunks

#: Seconds a delivery waits for the dot-lock and then the fcntl lock.
LOCK_WAIT: Final = 20.0
#: A dot-lock older than this (seconds) is left by a writer that died: removed.
STALE_LOCK: Final = 300.0
#: Seconds between two tries at a lock someone holds.
LOCK_RETRY: Final = 0.2
#: Octets written at once.
WRITE_CHUNK: Final = 256 * 1024
#: A line start held back while it may still turn out to be `>>>From `:
#: longer than any SMTP line (65 535 octets), so never reached by queued mail.
MAX_PENDING: Final = 128 * 1024

_FROM = re.compile(rb"^>*From ", re.MULTILINE)
#: Opening flags: read too (the last octets decide the separator), never
#: through a link, never a FIFO that blocks.
_OPEN = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class MailboxBusy(OSError):
    """The mailbox stayed locked for LOCK_WAIT: a temporary failure."""

    def __init__(self, what: str) -> None:
        super().__init__(errno.EAGAIN, f"mailbox locked ({what})")


def from_line(sender: str, when: float) -> bytes:
    """`From SENDER DATE` (asctime, local time, as mail.local writes it)."""
    who = "".join("_" if c.isspace() or not c.isprintable() else c for c in sender) or NULL_SENDER
    return f"From {who} {time.asctime(time.localtime(when))}\n".encode("utf-8", "surrogateescape")


class _Quoter:
    """mboxrd quoting over a stream of LF chunks: `>*From ` at a line start
    gets one more `>`, whatever chunk boundary falls inside it."""

    def __init__(self) -> None:
        self.pending = b""       # the start of a line not yet decided
        self.at_start = True     # whether `pending` (or the next byte) starts a line

    def feed(self, data: bytes) -> bytes:
        data = self.pending + data
        self.pending = b""
        out = []
        if not self.at_start:
            nl = data.find(b"\n")
            if nl < 0:
                return data
            out.append(data[:nl + 1])
            data = data[nl + 1:]
            self.at_start = True
        last = data.rfind(b"\n")
        whole, tail = data[:last + 1], data[last + 1:]
        out.append(_FROM.sub(rb">\g<0>", whole))
        if tail:
            core = tail.lstrip(b">")
            if b"From "[:len(core)] == core and len(tail) < MAX_PENDING:
                self.pending = tail          # may still become `>*From `
            else:
                out.append(_FROM.sub(rb">\g<0>", tail))
                self.at_start = False
        return b"".join(out)

    def end(self) -> bytes:
        """What is held back, and the line end and blank line that close the message."""
        tail = _FROM.sub(rb">\g<0>", self.pending) if self.pending else b""
        ends_line = (self.at_start and not self.pending)
        return tail + (b"\n" if ends_line else b"\n\n")


def mbox_entry(when_line: bytes, prefix: bytes, message: BinaryIO) -> Iterable[bytes]:
    """The octets appended for one message, in chunks (see the module doc)."""
    quoter = _Quoter()
    yield when_line
    yield quoter.feed(prefix.replace(b"\r\n", b"\n"))
    for chunk in lf_chunks(message):
        yield quoter.feed(chunk)
    yield quoter.end()


# -- locks ---------------------------------------------------------------------

def dotlock(dirfd: int, name: str, required: bool = True,
            wait: float = LOCK_WAIT, stale: float = STALE_LOCK) -> str | None:
    """Create `name.lock` in the directory `dirfd`; return its name.

    Waits up to `wait` seconds for another writer's lock (MailboxBusy
    after); removes one older than `stale`.  When `required` is false and
    the directory does not let us create files (EACCES, EPERM, EROFS), goes
    on without one (None): the fcntl lock still holds.
    """
    lock = f"{name}.lock"
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=dirfd)
        except FileExistsError:
            try:
                age = time.time() - os.stat(lock, dir_fd=dirfd, follow_symlinks=False).st_mtime
                if age > stale:
                    os.unlink(lock, dir_fd=dirfd)
                    continue
            except FileNotFoundError:
                continue                     # released meanwhile: try again now
            if time.monotonic() >= deadline:
                raise MailboxBusy(f"{lock} held") from None
            time.sleep(LOCK_RETRY)
            continue
        except OSError as e:
            if not required and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                return None
            raise
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
        return lock


def release(dirfd: int, lock: str | None) -> None:
    if lock is not None:
        try:
            os.unlink(lock, dir_fd=dirfd)
        except FileNotFoundError:
            pass


def _fcntl_lock(fd: int, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            raise MailboxBusy("fcntl lock held")
        time.sleep(LOCK_RETRY)


# -- opening -------------------------------------------------------------------

def _check(fd: int, uid: int | None) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "mailbox is not a regular file")
    if st.st_nlink > 1:
        raise OSError(errno.EMLINK, "mailbox has more than one link")
    if uid is not None and st.st_uid != uid:
        raise OSError(errno.EPERM, "mailbox is not owned by its user")


def open_spool_mailbox(dirfd: int, name: str, uid: int, gid: int) -> int:
    """As root, in the system mailbox directory: the user's mailbox, created
    (mode 0600, owned by uid:gid) if missing; refused unless it is a
    regular file with one link owned by `uid`."""
    try:
        fd = os.open(name, _OPEN | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dirfd)
    except FileExistsError:
        fd = os.open(name, _OPEN, dir_fd=dirfd)
    else:
        try:
            if os.geteuid() == 0:
                os.fchown(fd, uid, gid)
        except BaseException:
            os.close(fd)
            raise
    try:
        _check(fd, uid if os.geteuid() == 0 else None)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_user_mailbox(path: str) -> int:
    """As the delivering user: `path` opened for appending, created 0600 if
    missing; never through a link at its last component."""
    fd = os.open(path, _OPEN | os.O_CREAT, 0o600)
    try:
        _check(fd, None)
    except BaseException:
        os.close(fd)
        raise
    return fd


# -- appending -----------------------------------------------------------------

def append(fd: int, sender: str, prefix: bytes, message: BinaryIO,
           when: float | None = None, wait: float = LOCK_WAIT) -> None:
    """Append one message to the open mailbox `fd` under an fcntl lock.

    On any OSError the mailbox is truncated back to its size before the
    append, and the error raised again (the caller says temporary).
    """
    _fcntl_lock(fd, wait)
    try:
        size = os.fstat(fd).st_size
        try:
            separator = b""
            if size:
                last = os.pread(fd, 2, max(0, size - 2))
                separator = b"" if last.endswith(b"\n\n") or last == b"\n" else \
                    b"\n" if last.endswith(b"\n") else b"\n\n"
            pending = bytearray(separator)
            for piece in mbox_entry(from_line(sender, time.time() if when is None else when),
                                    prefix, message):
                pending += piece
                if len(pending) >= WRITE_CHUNK:
                    _write_all(fd, pending)
                    pending.clear()
            _write_all(fd, pending)
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, size)
                os.fsync(fd)
            except OSError:
                pass
            raise
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN)


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def deliver_file(path: str, sender: str, prefix: bytes, message: BinaryIO) -> None:
    """An alias target `/abs/path`: append to that file as whoever runs this.

    `/dev/null` takes the message and keeps nothing (the usual way to
    discard mail for an alias).  The dot-lock is taken when the directory
    lets us; the fcntl lock always.
    """
    if path == "/dev/null":
        return
    directory, name = os.path.split(path)
    if not name:
        raise OSError(errno.EISDIR, "mbox path names a directory", path)
    dirfd = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        lock = dotlock(dirfd, name, required=False)
        try:
            fd = os.open(name, _OPEN | os.O_CREAT, 0o600, dir_fd=dirfd)
            try:
                _check(fd, None)
                append(fd, sender, prefix, message)
            finally:
                os.close(fd)
        finally:
            release(dirfd, lock)
    finally:
        os.close(dirfd)
