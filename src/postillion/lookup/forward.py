"""`.forward` files and `:include:` files: target lists read from files.

A user's `HOME/.forward` (docs/tables.md, .forward) is used only if it is a
regular file owned by the user, not writable by group or others, smaller
than `MAX_FORWARD_SIZE`, with at most `MAX_FORWARD_TARGETS` targets and no
`:include:`; anything else -- a link, someone else's file, a read error --
is a temporary failure (`ForwardUnusable`), so the administrator or the
user can fix it before any mail is lost.  Absent or empty means "deliver
to the mailbox".  Who reads it: the daemon's root parent on behalf of the
smtp processes (daemon/parent.py), so the file is opened as root, never
through a link at its last component, and its checks are made on the open
descriptor; its targets later run as the user.

An `:include:/abs/path` of an alias table is read by the smtp process (the
queue user), bounded by `MAX_INCLUDE_SIZE`; a missing or unreadable one is
temporary too.

Both hold targets as an alias value does (`table.values.split_targets`),
one or more per line, `#` starting a comment line.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Final

from postillion.errors import Reply, TempFail
from postillion.table.values import BadValue, check_target, split_targets, target_kind

#: A `.forward` must be smaller than this (octets) and name at most this many targets.
MAX_FORWARD_SIZE: Final = 4096
MAX_FORWARD_TARGETS: Final = 100
#: An `:include:` file longer than this (octets) is refused (temporary).
MAX_INCLUDE_SIZE: Final = 1024 * 1024


class ForwardUnusable(TempFail):
    """A `.forward` or `:include:` file that cannot be used: 451 4.2.4."""

    def __init__(self, reason: str) -> None:
        super().__init__(Reply(451, "4.2.4", "Temporary failure in expansion"), reason)


def read_forward(home: str, uid: int) -> str | None:
    """`home/.forward` for the user `uid`: its text, or None when absent or
    empty; ForwardUnusable when it fails a rule (see the module doc)."""
    where = os.path.join(home, ".forward")
    try:
        dirfd = os.open(home, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None                      # a virtual user whose home is not made yet
    except OSError as e:
        raise ForwardUnusable(f"{home}: {e.strerror or e}") from None
    try:
        try:
            fd = os.open(".forward", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                         | os.O_CLOEXEC, dir_fd=dirfd)
        except FileNotFoundError:
            return None
        except OSError as e:
            what = "a symbolic link" if e.errno == errno.ELOOP else (e.strerror or str(e))
            raise ForwardUnusable(f"{where}: {what}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ForwardUnusable(f"{where}: not a regular file")
            if st.st_uid != uid:
                raise ForwardUnusable(f"{where}: not owned by uid {uid}")
            if st.st_mode & 0o022:
                raise ForwardUnusable(f"{where}: writable by group or others")
            data = os.read(fd, MAX_FORWARD_SIZE)
            if len(data) >= MAX_FORWARD_SIZE:
                raise ForwardUnusable(f"{where}: {MAX_FORWARD_SIZE} octets or more")
        except OSError as e:
            raise ForwardUnusable(f"{where}: {e.strerror or e}") from None
        finally:
            os.close(fd)
    finally:
        os.close(dirfd)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ForwardUnusable(f"{where}: not UTF-8 text") from None
    return text if text.strip() else None


def read_include(path: str) -> str:
    """An `:include:` file's text; ForwardUnusable if it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_INCLUDE_SIZE + 1)
    except OSError as e:
        raise ForwardUnusable(f":include:{path}: {e.strerror or e}") from None
    if len(data) > MAX_INCLUDE_SIZE:
        raise ForwardUnusable(f":include:{path}: longer than {MAX_INCLUDE_SIZE} octets")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ForwardUnusable(f":include:{path}: not UTF-8 text") from None


def parse_targets(text: str, where: str, forward: bool) -> tuple[str, ...]:
    """The targets of a `.forward` (`forward`) or an `:include:` file.

    Raises ForwardUnusable on a malformed target, on `:include:` in a
    `.forward`, or on more than MAX_FORWARD_TARGETS targets in a `.forward`."""
    targets: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            found = split_targets(line)
            for target in found:
                check_target(target)
                if forward and target_kind(target) == "include":
                    raise BadValue(":include: is not allowed in a .forward")
        except BadValue as bad:
            raise ForwardUnusable(f"{where}:{number}: {bad}") from None
        targets += found
        if forward and len(targets) > MAX_FORWARD_TARGETS:
            raise ForwardUnusable(f"{where}: more than {MAX_FORWARD_TARGETS} targets")
    return tuple(targets)
