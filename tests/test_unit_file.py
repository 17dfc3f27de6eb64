"""contrib/postillion.service: systemd accepts it, it says what
docs/install.md says it does, and its capability bounding set is enough
for the daemon's root work.

`systemd-analyze verify` (Debian's systemd package; no running systemd
needed) checks every key and that the commands exist: the unit is checked
with ExecStart pointing at the postillion this suite runs, the one thing
that differs on a host.  With MANPATH on the repository's man/, it also
finds the pages Documentation= names.

The bounding set is tried for real: the daemon started as root under
`setpriv --bounding-set` (util-linux) with exactly the unit's capabilities
binds, hands the spool to _postillion, reads a .forward in a 0700 home,
delivers as the user and as the queue user, and stops its processes.
"""

from __future__ import annotations

import configparser
import os
import pwd
import shutil
import smtplib
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.conftest import daemon  # noqa: F401  (the fixture)
from tests.sysuser import home_user

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "contrib" / "postillion.service"
INSTALLED = "/opt/postillion/bin/postillion"
#: What the parent needs and the unit must keep: ports below 1024, the
#: privilege drops, the spool and mailboxes handed to their owners, homes
#: and files it reads as root, signals to processes of other users.
NEEDED = {"CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID", "CAP_CHOWN",
          "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_KILL"}
#: Options that strip set-user-ID programs that delivery commands may run
#: (NoNewPrivileges= and those that imply it), or that hide the homes mail
#: is delivered into.
FORBIDDEN = {"NoNewPrivileges", "PrivateDevices", "ProtectKernelTunables",
             "ProtectKernelModules", "ProtectKernelLogs", "ProtectClock", "ProtectHostname",
             "RestrictAddressFamilies", "RestrictNamespaces", "RestrictRealtime",
             "RestrictSUIDSGID", "SystemCallFilter", "SystemCallArchitectures",
             "LockPersonality", "MemoryDenyWriteExecute", "ProtectHome", "User", "DynamicUser"}


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=True, delimiters=("=",),
                                          comment_prefixes=("#", ";"))
    parser.optionxform = str          # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_systemd_analyze_verify_is_silent(tmp_path):
    postillion = Path(sys.executable).parent / "postillion"
    assert os.access(postillion, os.X_OK), f"{postillion}: the suite's postillion is not installed"
    text = UNIT.read_text()
    assert text.count(INSTALLED) == 1
    copy = tmp_path / "postillion.service"
    copy.write_text(text.replace(INSTALLED, str(postillion)))
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: install Debian's systemd (make test-deps does)"
    done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "MANPATH": str(REPO / "man")})
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr


def test_the_unit_says_what_the_docs_say():
    service = unit()["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["ExecStart"] == f"{INSTALLED} run -f /etc/postillion/postillion.conf"
    assert " -d" not in service["ExecStart"]    # the log goes to /dev/log (docs/logs.md)
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillMode"] == "mixed"       # the parent stops its processes in order
    assert service["Restart"] == "on-failure"
    assert set(service["CapabilityBoundingSet"].split()) >= NEEDED
    assert service["ProtectSystem"] == "full"   # /var and /home stay writable
    assert not FORBIDDEN & set(service), FORBIDDEN & set(service)
    assert unit()["Install"]["WantedBy"] == "multi-user.target"
    assert "contrib/postillion.service" in (REPO / "docs" / "install.md").read_text()


CONFIG = """\
table aliases file:{root}/aliases
listen on {host} port {port} hostname mx.example.test
action "local" maildir alias <aliases>
match from any for domain example.test action "local"
"""


def wait_for(what: str, check, log, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout}s\n{log()}")


def capability_mask(names: set[str]) -> int:
    """CapBnd's bits for these names, read from the kernel's own numbering
    as setpriv lists it."""
    listed = subprocess.run(["setpriv", "--list-caps"], capture_output=True, text=True,
                            check=True, timeout=10).stdout.split()
    return sum(1 << listed.index(name.removeprefix("CAP_").lower()) for name in names)


def test_the_bounding_set_is_enough_to_receive_and_deliver(daemon):  # noqa: F811
    assert os.geteuid() == 0, "the unit runs the daemon as root: run the suite as root (CI does)"
    caps = set(unit()["Service"]["CapabilityBoundingSet"].split())
    queue = pwd.getpwnam("_postillion")
    root = daemon.root
    (root / "filed").mkdir(mode=0o700)
    os.chown(root / "filed", queue.pw_uid, queue.pw_gid)
    with home_user(root) as (user, uid, gid, home):
        (root / "aliases").write_text(f"filed: {root}/filed/archive.mbox\n")
        forward = home / ".forward"          # read by root in a 0700 home it does not own
        forward.write_text(f"\\{user}\n")
        os.chown(forward, uid, gid)
        daemon.config.write_text(CONFIG.format(root=root, host=daemon.host, port=daemon.port))
        daemon.log_path = root / "daemon-0.log"
        with open(daemon.log_path, "wb") as out:
            bounding = ",".join(["-all", *(f"+{c.removeprefix('CAP_').lower()}" for c in sorted(caps))])
            daemon.proc = subprocess.Popen(
                ["setpriv", f"--bounding-set={bounding}", "--", sys.executable, "-m",
                 "postillion.cli", "run", "-d", "-f", str(daemon.config), "-s", str(daemon.spool)],
                stdout=out, stderr=subprocess.STDOUT)
        daemon.wait_listening()
        status = Path(f"/proc/{daemon.proc.pid}/status").read_text()
        [bnd] = [line.split()[1] for line in status.splitlines() if line.startswith("CapBnd:")]
        assert int(bnd, 16) == capability_mask(caps), status

        with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as client:
            refused = client.sendmail("someone@example.net",
                                      [f"{user}@example.test", "filed@example.test"],
                                      b"Subject: bounded\r\n\r\nhello\r\n")
        assert refused == {}
        new = home / "Maildir" / "new"
        mail = wait_for("the user's delivery", lambda: new.exists() and list(new.iterdir()),
                        daemon.log)
        assert {p.stat().st_uid for p in mail} == {uid}
        archive = root / "filed" / "archive.mbox"
        wait_for("the queue user's delivery", lambda: archive.exists() and archive.stat().st_size,
                 daemon.log)
        assert archive.stat().st_uid == queue.pw_uid
        daemon.stop()
    log = daemon.log()
    assert "Operation not permitted" not in log and "Permission denied" not in log, log
    assert "postillion stopping" in log
