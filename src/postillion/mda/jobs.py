"""One local delivery, resolved: what the agent runs for one envelope.

The daemon's dispatcher (in the queue process) builds an `MdaJob` from the
envelope, its action and the user's userinfo; the job then crosses to the
root parent (daemon/parent.py) which hands it to the agent, so it holds
only plain values.  Which method a job uses:

* the envelope's `mda-exec`, when expansion set it from an alias target
  (docs/tables.md, Alias targets): `|command` runs the command (`mda`),
  `/abs/path/` is a Maildir, `/abs/path` an mbox file (`file`);
* else the action's method: `maildir`, `mbox` or `mda`.

A command is split into words and expanded here, so the agent only runs
what it is given (mda/command.py); the wrapper of the action, if any,
wraps it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from postillion.config.model import ActionDecl
from postillion.errors import PermFail, Reply, TempFail
from postillion.mda import command
from postillion.mda.format import FormatEnv, FormatError
from postillion.queue.envelope import Envelope
from postillion.table.values import Userinfo

#: Methods a job may have.
METHODS: Final = ("maildir", "mbox", "file", "mda")


@dataclass(frozen=True, slots=True)
class MdaJob:
    """What one local delivery needs, resolved by the daemon's dispatcher."""

    message: Path           # the queued message file
    prefix: bytes           # Return-Path / Delivered-To lines, CRLF-terminated
    path_template: str | None  # maildir PATH or mbox file (format specifiers; None: ~/Maildir)
    user: Userinfo
    sender: str
    rcpt: str
    dest: str
    name: str | None = None  # the envelope's Maildir file name (maildir.stable_name)
    method: str = "maildir"  # one of METHODS
    argv: tuple[str, ...] = ()      # mda: the command's words, expanded
    environ: tuple[str, ...] = ()   # mda: its environment, KEY=value


def temp(text: str) -> TempFail:
    return TempFail(Reply(451, "4.2.0", text), text)


def perm(text: str) -> PermFail:
    return PermFail(Reply(550, "5.2.0", text), text)


def literal(path: str) -> str:
    """A path taken as written (an alias target), as a template: `%` doubled."""
    return path.replace("%", "%%")


def job_method(env: Envelope, action: ActionDecl) -> str:
    """The method an envelope is delivered with (see the module doc)."""
    target = env.mda_exec
    if target.startswith("|"):
        return "mda"
    if target.startswith("/"):
        return "maildir" if target.endswith("/") else "file"
    return action.method


def build_job(env: Envelope, action: ActionDecl, user: Userinfo, *, message: Path,
              prefix: bytes, name: str | None, wrappers: Mapping[str, str],
              sub_addr_delim: str = "+", junk: bool = False) -> MdaJob:
    """The job for `env`, delivered as `user` under `action`.

    `junk`: the message is marked spam and the maildir action has `junk`:
    it goes to the Maildir++ folder `.Junk` of the Maildir.
    Raises TempFail for a command that cannot be split or expanded (an alias
    table's command: the administrator can fix the table), PermFail for a
    method no local delivery has."""
    method = job_method(env, action)
    base = MdaJob(message=message, prefix=prefix, path_template=None, user=user,
                  sender=env.sender, rcpt=env.rcpt, dest=env.dest, name=name, method=method)
    target = env.mda_exec
    if method == "maildir":
        template = literal(target) if target else action.path
        if junk and not target and action.junk:
            template = (template or "~/Maildir").rstrip("/") + "/.Junk"
        return replace(base, path_template=template)
    if method == "file":
        return replace(base, path_template=literal(target))
    if method == "mbox":
        return base
    if method != "mda":
        raise perm(f"action {action.name} has no local delivery method ({action.method})")
    text = target[1:].strip() if target else (action.command or "")
    wrapper = dict(wrappers).get(action.wrapper) if action.wrapper else None
    fenv = FormatEnv(sender=env.sender, rcpt=env.rcpt, dest=env.dest, username=user.username,
                     directory=user.home, subaddress_delim=sub_addr_delim)
    try:
        argv = command.build_argv(text, fenv, wrapper)
    except (FormatError, ValueError) as e:
        raise temp(f"cannot build the command: {e}") from None
    environ = command.environment(user.username, user.home, env.sender, env.rcpt, env.dest,
                                  env.mda_subaddress)
    return replace(base, argv=tuple(argv),
                    environ=tuple(f"{k}={v}" for k, v in sorted(environ.items())))
