"""Commands: `action ... mda "COMMAND"`, `mda wrapper`, and `|command` alias targets.

No shell, ever (docs/configuration.md, Commands): the command is split into
words with shell quoting rules *before* anything from the envelope is put
in, then each word is expanded on its own (`format.expand`, unsafe
characters escaped unless `:raw`), and the words are exec'd directly.  An
address holding `;`, `$(...)` or a backquote reaches the command as those
characters in one argument, never as shell syntax (envelope data in a shell
was OpenSMTPD's CVE-2020-7247).

A wrapper (`mda wrapper NAME "CMD"`, action option `wrapper NAME`) is split
the same way; a word that is exactly `%{mda}` is replaced by the words of the
command it wraps, `%{mda}` inside a longer word by that command quoted for a
shell (`shlex.join`: a wrapper that runs `sh -c` gets it safely quoted), and a
wrapper without `%{mda}` gets the command's words appended.

`run` is what the delivery worker does, already as the recipient (never
root): the command runs with an environment of only the variables listed
in `ENVIRONMENT`, in the user's home (else `/`), in a session of its own
(so a timeout kills all it started), with a CPU-time limit; the message
(with `Return-Path:` and `Delivered-To:` first) on its standard input, LF
line ends.  Its outcome, as sysexits(3) says:

* exit 0, having read all its input: delivered;
* exit 75 (EX_TEMPFAIL), 71 (EX_OSERR), killed by a signal, or a timeout:
  temporary;
* any other status: permanent, the reason being the last line it wrote
  (standard output and error together), else `command exited with status N`;
* a program that cannot be exec'd (missing, not executable): permanent, as a
  shell's 126/127 would be.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import selectors
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from typing import BinaryIO, Final

from postillion.mda.format import FormatEnv, expand
from postillion.mda.stream import lf_chunks

EX_OK: Final = 0
EX_OSERR: Final = 71
EX_TEMPFAIL: Final = 75
EX_PERM: Final = 1
TEMPORARY_STATUSES: Final = frozenset({EX_OSERR, EX_TEMPFAIL})

#: The only variables a command sees (docs/configuration.md, Commands).
ENVIRONMENT: Final = ("DOMAIN", "EXTENSION", "HOME", "LOCAL", "LOGNAME", "ORIGINAL_RECIPIENT",
                      "PATH", "RECIPIENT", "SENDER", "SHELL", "USER")
#: PATH of a command (OpenSMTPD's _PATH_DEFPATH, with /usr/local first).
COMMAND_PATH: Final = "/usr/local/bin:/usr/bin:/bin"
#: What a command may write that we keep: its last line is the reason.
MAX_OUTPUT: Final = 4096
#: Longest reason kept from a command's last line.
MAX_REASON: Final = 200

_MDA_WORD: Final = "%{mda}"
#: `%{mda}` with or without modifiers: always raw (it is a command line).
_MDA_IN: Final = re.compile(r"%\{mda(?:[:|][a-z|:]*)?\}")


def split(command: str) -> list[str]:
    """The words of a command, shell quoting applied (the config already
    refused shell syntax; a `|command` alias target was checked at load)."""
    return shlex.split(command)


def build_argv(command: str, env: FormatEnv, wrapper: str | None = None) -> list[str]:
    """argv of `command` (split, then each word expanded), through `wrapper` if given.

    Raises FormatError for an unknown specifier, ValueError for quoting
    that does not close."""
    argv = [expand(word, env) for word in split(command)]
    if not argv:
        raise ValueError("empty command")
    if wrapper is None:
        return argv
    inner = FormatEnv(env.sender, env.rcpt, env.dest, env.username, env.directory,
                      env.subaddress_delim, mda=shlex.join(argv))
    out: list[str] = []
    spliced = False
    for word in split(wrapper):
        if word == _MDA_WORD:
            out += argv
            spliced = True
        else:
            spliced = spliced or _MDA_IN.search(word) is not None
            out.append(expand(_MDA_IN.sub("%{mda:raw}", word), inner))
    return out if spliced else out + argv


def environment(user: str, home: str, sender: str, rcpt: str, dest: str,
                subaddress: str) -> dict[str, str]:
    """The command's environment: exactly ENVIRONMENT.

    RECIPIENT is the expanded address and LOCAL/DOMAIN its parts,
    ORIGINAL_RECIPIENT the address the client gave, EXTENSION the `+tag`,
    SENDER empty for the null sender."""
    local, _, domain = dest.rpartition("@")
    if not _:
        local, domain = dest, ""
    env = {"DOMAIN": domain, "EXTENSION": subaddress, "HOME": home, "LOCAL": local,
           "LOGNAME": user, "ORIGINAL_RECIPIENT": rcpt, "PATH": COMMAND_PATH,
           "RECIPIENT": dest, "SENDER": sender, "SHELL": "/bin/sh", "USER": user}
    return {k: "".join(c for c in v if c not in "\0\r\n") for k, v in env.items()}


def last_line(output: bytes) -> str:
    lines = [line.strip() for line in output.replace(b"\r", b"\n").split(b"\n")]
    text = next((line for line in reversed(lines) if line), b"")
    return "".join(c if c.isprintable() else "?" for c in
                   text.decode("utf-8", "replace"))[:MAX_REASON]


def _input(prefix: bytes, message: BinaryIO) -> Iterator[bytes]:
    yield prefix.replace(b"\r\n", b"\n")
    yield from lf_chunks(message)


def run(argv: list[str], environ: Mapping[str, str], home: str, prefix: bytes,
        message: BinaryIO, timeout: float, cpu: int) -> tuple[int, str]:
    """Run one delivery command; (status, reason): 0, EX_TEMPFAIL or EX_PERM.

    Never as root: refused (temporary) when the caller still is."""
    if os.geteuid() == 0:
        return EX_TEMPFAIL, "refusing to run a command as root"
    cwd = home if home.startswith("/") and os.path.isdir(home) and os.access(home, os.X_OK) else "/"

    def in_child() -> None:          # after fork, before exec: no threads here
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        # The worker ignores the daemon's ^C; an ignored signal would stay
        # ignored across exec.
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    out_r, out_w = os.pipe()
    try:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out_w, stderr=out_w,
                                    cwd=cwd, env=dict(environ), close_fds=True,
                                    start_new_session=True,
                                    preexec_fn=in_child)  # noqa: PLW1509 -- the worker has no threads
        except OSError as e:
            status = EX_TEMPFAIL if e.errno in (errno.EAGAIN, errno.ENOMEM, errno.EMFILE,
                                                errno.ENFILE) else EX_PERM
            return status, f"cannot run {argv[0]}: {e.strerror or e}"
        finally:
            os.close(out_w)
        return _supervise(proc, out_r, _input(prefix, message), timeout)
    finally:
        os.close(out_r)


def _supervise(proc: subprocess.Popen[bytes], out_r: int, data: Iterator[bytes],
               timeout: float) -> tuple[int, str]:
    """Feed stdin, keep the tail of the output, wait for the exit, all
    within `timeout`."""
    assert proc.stdin is not None
    stdin = proc.stdin.fileno()
    os.set_blocking(stdin, False)
    os.set_blocking(out_r, False)
    pidfd = os.pidfd_open(proc.pid)
    deadline = time.monotonic() + timeout
    output = bytearray()
    pending = memoryview(b"")
    all_read = True                      # false once the command stops reading early
    feeding = True
    sel = selectors.DefaultSelector()
    sel.register(stdin, selectors.EVENT_WRITE, "in")
    sel.register(out_r, selectors.EVENT_READ, "out")
    sel.register(pidfd, selectors.EVENT_READ, "exit")
    exited = False
    try:
        while not exited:
            left = deadline - time.monotonic()
            if left <= 0:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return EX_TEMPFAIL, f"command timed out after {timeout:g}s"
            for key, _ in sel.select(left):
                if key.data == "exit":
                    exited = True
                elif key.data == "out":
                    chunk = _read(out_r)
                    if chunk is None:
                        continue
                    if not chunk:
                        sel.unregister(out_r)
                    output += chunk
                    del output[:-MAX_OUTPUT]
                elif key.data == "in" and feeding:
                    if not pending:
                        piece = next(data, None)
                        if piece is None:
                            feeding = False
                            sel.unregister(stdin)
                            proc.stdin.close()
                            continue
                        pending = memoryview(piece)
                    try:
                        pending = pending[os.write(stdin, pending):]
                    except BlockingIOError:
                        pass
                    except BrokenPipeError:
                        all_read, feeding = False, False
                        sel.unregister(stdin)
                        proc.stdin.close()
        # What the command wrote just before it ended (a descendant that
        # keeps the pipe open is not waited for).
        while (chunk := _read(out_r)):
            output += chunk
            del output[:-MAX_OUTPUT]
    finally:
        sel.close()
        os.close(pidfd)
        if not proc.stdin.closed:
            proc.stdin.close()
    code = proc.wait()
    if feeding and (pending or any(data)):
        all_read = False            # exited before we wrote everything
    return outcome(code, all_read, bytes(output))


def _read(fd: int) -> bytes | None:
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None


def outcome(code: int, all_read: bool, output: bytes) -> tuple[int, str]:
    """(status, reason) of a command that ended with `code` (negative: a signal)."""
    line = last_line(output)
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return EX_TEMPFAIL, f"command killed by signal {name}"
    if code == EX_OK:
        if not all_read:
            return EX_TEMPFAIL, "command exited before reading the whole message"
        return EX_OK, "Delivered"
    reason = line or f"command exited with status {code}"
    return (EX_TEMPFAIL if code in TEMPORARY_STATUSES else EX_PERM), reason
