"""The real system calls behind a `250 ... accepted`, seen by strace(1).

The daemon runs under `strace -f` (delivery paused, so the trace holds the
commit only) and takes one message.  Before it writes the 250, the kernel
has been asked to flush -- fdatasync for each file of the message, fsync
for each directory the commit touched -- and has answered; nothing flushes
the whole file system (syncfs, sync), which would wait for every other
program's data.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.conftest import free_port

#: Calls traced: every way to flush, the commit's rename, and the reply's write.
TRACED = ("io_submit,io_getevents,fsync,fdatasync,syncfs,sync,sync_file_range,"
          "rename,renameat,renameat2,write,writev,sendto,sendmsg")
CALL = re.compile(r"^\d+\s+(?:<\.\.\. )?(\w+)")


def test_the_message_s_files_and_directories_are_flushed_before_the_250(tmp_path):
    port = free_port()
    spool = tmp_path / "spool"
    home = tmp_path / "home"
    home.mkdir()
    config = tmp_path / "postillion.conf"
    config.write_text(
        "table domains { example.test }\n"
        "table virtuals { alice@example.test = alice }\n"
        f'table users {{ alice = "65534:65534:{home}" }}\n'
        f"listen on 127.0.0.1 port {port} hostname mx.example.test\n"
        'action "local_mail" maildir virtual <virtuals> userbase <users>\n'
        'match from any for domain example.test action "local_mail"\n')
    trace = tmp_path / "trace"
    log = open(tmp_path / "daemon.log", "wb")
    strace = subprocess.Popen(
        ["strace", "-f", "--seccomp-bpf", "-y", "-qq", "-s", "80", "-o", str(trace), "-e", f"trace={TRACED}",
         sys.executable, "-m", "postillion.cli", "run", "-d", "-f", str(config), "-s", str(spool), "-P", "mda"],
        stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        reply = send_one(port, strace)
        assert reply[0] == 250, reply
        msgid = reply[1].split()[1].decode()  # "2.0.0 <msgid> Message accepted for delivery"
    finally:
        stop(strace, spool)
    lines = trace.read_text().splitlines()

    incoming, queue = spool / "incoming", spool / "queue"
    staging, bucket = incoming / msgid, queue / msgid[:2]
    [message] = [i for i, line in enumerate(lines) if "250 2.0.0 " + msgid in line]
    [sent] = [i for i in range(message) if "io_submit(" in lines[i] and f"{staging}/message>" in lines[i]]
    # The smtp process works in the spool (its path may be out of its reach
    # once it is unprivileged): the rename names it relative to there.
    renamed = (f'"{staging}", "{bucket / msgid}"',
               f'"incoming/{msgid}", "queue/{msgid[:2]}/{msgid}"')
    [moved] = [i for i in range(sent, message) if any(r in lines[i] for r in renamed)]
    [dirs] = [i for i in range(moved, message) if "io_submit(" in lines[i] and f"{bucket}>" in lines[i]]

    # One request per file and directory, each the right call, all at once.
    files = requests(lines[sent])
    assert files[f"{staging}/message"] == "IOCB_CMD_FDSYNC"
    envelopes = [p for p in files if re.fullmatch(rf"{staging}/{msgid}[0-9a-f]{{8}}", p)]
    assert envelopes and all(files[p] == "IOCB_CMD_FDSYNC" for p in envelopes)
    assert files[str(staging)] == "IOCB_CMD_FSYNC"
    assert set(files) == {f"{staging}/message", *envelopes, str(staging)}
    directories = requests(lines[dirs])
    assert set(directories) <= {str(bucket), str(incoming), str(queue)}
    assert {str(bucket), str(incoming)} <= set(directories)
    assert set(directories.values()) == {"IOCB_CMD_FSYNC"}

    # Each batch of requests completed -- no error -- before the 250 was written.
    assert completed(lines, sent, moved) == len(files)
    assert completed(lines, dirs, message) == len(directories)
    flushes = [CALL.match(line).group(1) for line in lines if CALL.match(line)]
    assert not {"syncfs", "sync", "sync_file_range"} & set(flushes), "a whole-file-system flush"


def send_one(port: int, strace: subprocess.Popen) -> tuple[int, bytes]:
    deadline = time.monotonic() + 30
    while True:
        assert strace.poll() is None, "the daemon under strace exited"
        try:
            client = smtplib.SMTP("127.0.0.1", port, timeout=10)
            break
        except OSError:
            assert time.monotonic() < deadline, "the daemon under strace never listened"
            time.sleep(0.1)
    with client:
        client.ehlo("client.example.net")
        client.mail("bob@example.net")
        client.rcpt("alice@example.test")
        return client.data(b"Subject: traced\r\n\r\nflushed before the reply\r\n")


def stop(strace: subprocess.Popen, spool: Path) -> None:
    """SIGTERM to the daemon (strace ends with it), SIGKILL to both if stuck."""
    pid_file = spool / "postillion.pid"
    try:
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
        strace.wait(timeout=15)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        strace.kill()
        strace.wait(timeout=5)


def requests(line: str) -> dict[str, str]:
    """The (path -> opcode) of each request of an io_submit line."""
    found = re.findall(r"aio_lio_opcode=(IOCB_CMD_\w+), aio_fildes=\d+<([^>]*)>", line)
    assert len(found) == len(set(p for _, p in found)), line
    return {path: op for op, path in found}


def completed(lines: list[str], start: int, end: int) -> int:
    """Requests reported done by io_getevents between two lines, all with res=0."""
    done = 0
    for line in lines[start + 1:end]:
        if CALL.match(line) and CALL.match(line).group(1) == "io_getevents" and "= " in line:
            results = re.findall(r"res=(-?\d+)", line)
            assert all(r == "0" for r in results), line
            done += len(results)
    return done
