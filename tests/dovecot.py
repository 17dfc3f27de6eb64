"""A private Dovecot for tests: IMAP to read what we deliver, LMTP to deliver to.

`make test` installs Dovecot (Debian packages dovecot-imapd and
dovecot-lmtpd).  The package may start a system Dovecot on install; the
tests neither need nor touch it: each `PrivateDovecot` is its own
`dovecot -F -c OUR.conf` with its own base_dir (sockets, pid file), state
and log under a temporary directory, IMAP and LMTP on loopback ports from
`free_port()`, LMTP on a Unix socket in its base_dir too (mode 0666, so the
daemon's unprivileged user may connect), users from a passwd-file, and
their mail in `HOME/Maildir` -- where Postillion's maildir action writes by
default, so Dovecot serves what either path delivered.

Users log in over IMAP with PLAIN and no TLS (loopback only).  A user's
name is looked up without its domain (`%n`), so `RCPT TO:<alice>` and
`RCPT TO:<alice@any.domain>` both reach alice.  As root the mail belongs to
`delivery_ids()` (nobody): Dovecot runs its internal processes as its own
users and each delivery as the mail's owner.  As another user everything
runs as that user (Dovecot's rootless mode).
"""

from __future__ import annotations

import grp
import imaplib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.conftest import delivery_ids, free_port

HOST = "127.0.0.1"
DOVECOT = "/usr/sbin/dovecot"
#: Longest Dovecot may take to listen, or a test to wait for a message.
START_TIMEOUT = 15.0
WAIT_TIMEOUT = 15.0

CONFIG = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap lmtp
listen = {host}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:~/Maildir
first_valid_uid = 1
{rootless}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {root}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%n {root}/passwd
}}
service imap-login {{
  {chroot}
  inet_listener imap {{
    address = {host}
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = {host}
    port = {lmtp_port}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
}}
"""

#: Not root: every Dovecot process runs as us, and nothing is chrooted.
ROOTLESS = """\
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
service anvil {{
  chroot =
}}
"""


def require_dovecot() -> None:
    """Fail loudly when Dovecot is missing: `make test` installs it."""
    missing = [p for p in (DOVECOT, "/usr/lib/dovecot/imap", "/usr/lib/dovecot/lmtp")
               if not os.path.exists(p)]
    assert not missing, (f"{', '.join(missing)} missing: `make test` installs Dovecot "
                         "(Debian packages dovecot-imapd and dovecot-lmtpd)")


@dataclass
class PrivateDovecot:
    """One running Dovecot and its files; see the module docstring."""

    root: Path
    users: dict[str, str]              # name -> password
    imap_port: int
    lmtp_port: int
    host: str = HOST
    proc: subprocess.Popen[bytes] | None = None
    homes: dict[str, Path] = field(default_factory=dict)

    @property
    def lmtp_socket(self) -> Path:
        return self.root / "run" / "lmtp"

    @property
    def lmtp_address(self) -> str:
        return f"{self.host}:{self.lmtp_port}"

    def home(self, user: str) -> Path:
        return self.homes[user]

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def imap(self, user: str) -> imaplib.IMAP4:
        client = imaplib.IMAP4(self.host, self.imap_port, timeout=10)
        client.login(user, self.users[user])
        return client

    def messages(self, user: str) -> list[bytes]:
        """Every message in the user's INBOX, as IMAP serves it (BODY[],
        CRLF line ends), in the order they arrived."""
        client = self.imap(user)
        try:
            typ, data = client.select("INBOX", readonly=True)
            assert typ == "OK", data
            if int(data[0]) == 0:
                return []
            typ, data = client.uid("FETCH", "1:*", "(BODY.PEEK[])")
            assert typ == "OK", data
            return [part[1] for part in data if isinstance(part, tuple)]
        finally:
            client.logout()

    def wait_message(self, user: str, marker: bytes, timeout: float = WAIT_TIMEOUT) -> bytes:
        """The one message of the user's INBOX that holds `marker` (a
        Message-ID), once it has arrived."""
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.messages(user) if marker in m]
            if found:
                assert len(found) == 1, f"{len(found)} copies of {marker!r} for {user}"
                return found[0]
            assert time.monotonic() < deadline, \
                f"no message with {marker!r} for {user} after {timeout}s\n{self.log()}"
            time.sleep(0.05)

    def start(self) -> None:
        require_dovecot()
        with open(self.root / "stderr.log", "wb") as stderr:
            self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(self.root / "dovecot.conf")],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=stderr)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                stderr = (self.root / "stderr.log").read_text(errors="replace")
                raise AssertionError(f"dovecot did not start:\n{stderr}\n{self.log()}")
            time.sleep(0.05)

    def _listening(self) -> bool:
        if not self.lmtp_socket.exists():
            return False
        for port in (self.imap_port, self.lmtp_port):
            try:
                with socket.create_connection((self.host, port), timeout=1) as probe:
                    if not probe.recv(4):
                        return False
            except OSError:
                return False
        return True

    def stop(self) -> None:
        """SIGTERM the master (it stops its children), SIGKILL if it lingers."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None


def make_dovecot(root: Path, users: Mapping[str, str], homes: Path | None = None) -> PrivateDovecot:
    """Write the configuration and passwd-file for `users` (name -> password)
    under `root`; their homes are `homes/<name>` (default `root/mail`),
    created for the mail's owner.  Not started."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    homes = homes or root / "mail"
    homes.mkdir(mode=0o755, exist_ok=True)
    uid, gid = delivery_ids()
    dovecot = PrivateDovecot(root=root, users=dict(users), imap_port=free_port(HOST),
                             lmtp_port=free_port(HOST))
    lines = []
    for name, password in users.items():
        home = homes / name
        home.mkdir(mode=0o700, exist_ok=True)
        os.chown(home, uid, gid)
        dovecot.homes[name] = home
        lines.append(f"{name}:{{PLAIN}}{password}:{uid}:{gid}::{home}::\n")
    (root / "passwd").write_text("".join(lines))
    os.chmod(root / "passwd", 0o644)
    rootless = chroot = ""
    if os.geteuid() != 0:
        rootless = ROOTLESS.format(user=pwd.getpwuid(os.getuid()).pw_name,
                                   group=grp.getgrgid(os.getgid()).gr_name)
        chroot = "chroot ="
    (root / "dovecot.conf").write_text(CONFIG.format(
        root=root, host=HOST, imap_port=dovecot.imap_port, lmtp_port=dovecot.lmtp_port,
        rootless=rootless, chroot=chroot))
    return dovecot


@pytest.fixture(scope="module")
def dovecot() -> Iterator[PrivateDovecot]:
    """A running private Dovecot with users alice and bob (password "pw"),
    for the whole test module; stopped and removed at teardown."""
    root = Path(tempfile.mkdtemp(prefix="postillion-dovecot-", dir="/tmp"))
    server = make_dovecot(root, {"alice": "pw", "bob": "pw"})
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
