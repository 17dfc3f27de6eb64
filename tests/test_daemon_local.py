"""The local dispatcher's choices: which method, as whom, and the job it
builds -- without running it (the agent is replaced by a recorder)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from postillion.config import parse
from postillion.daemon import Daemon, open_tables
from postillion.errors import PermFail
from postillion.queue.envelope import Envelope

CONFIG = """\
table users { alice = "2001:2001:/home/alice" }
mda wrapper "nice" "/usr/bin/nice -n 5 %{mda}"
action "box" maildir "~/Mail/%{dest.user}" userbase <users>
action "as-nobody" maildir userbase <users> user nobody
action "procmail" mda "/usr/bin/procmail -a %{rcpt.user:raw} -d %{user.username}" userbase <users> wrapper "nice"
action "fwd" forward-only userbase <users>
action "spamfiled" maildir junk userbase <users>
match from local for local action "box"
"""


@pytest.fixture
async def daemon(tmp_path):
    d = Daemon(parse(CONFIG, str(tmp_path / "smtpd.conf")), tmp_path / "spool")
    d.tables = await open_tables(d.config)
    jobs = []

    async def record(job, env):
        jobs.append(job)

    d.deliver = record
    message = d.store.message_path(0x12345678)
    message.parent.mkdir(parents=True, exist_ok=True)
    message.write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    yield d, jobs
    for t in d.tables.values():
        await t.close()


def envelope(dispatcher: str, **fields) -> Envelope:
    base = dict(rcpt="Alice+Tag@Example.Test", dest="alice@example.test", mda_user="alice",
                mda_subaddress="tag", sender="bob@example.net")
    return Envelope.new(0x12345678, dispatcher=dispatcher, **{**base, **fields})


async def test_the_action_method_as_the_recipient(daemon):
    d, jobs = daemon
    await d.dispatch(envelope("box"))
    [job] = jobs
    assert (job.method, job.path_template, job.user.uid) == ("maildir", "~/Mail/%{dest.user}", 2001)


async def test_user_name_delivers_as_that_system_account(daemon):
    d, jobs = daemon
    await d.dispatch(envelope("as-nobody"))
    nobody = pwd.getpwnam("nobody")
    assert (jobs[0].user.username, jobs[0].user.uid) == ("nobody", nobody.pw_uid)


async def test_a_command_is_split_expanded_and_wrapped(daemon):
    d, jobs = daemon
    await d.dispatch(envelope("procmail"))
    [job] = jobs
    assert job.method == "mda"
    assert job.argv == ("/usr/bin/nice", "-n", "5", "/usr/bin/procmail", "-a", "Alice+Tag",
                        "-d", "alice")
    env = dict(e.split("=", 1) for e in job.environ)
    assert (env["RECIPIENT"], env["EXTENSION"], env["HOME"]) == ("alice@example.test", "tag", "/home/alice")


async def test_alias_targets_run_as_the_queue_user_forward_ones_as_the_user(daemon):
    d, jobs = daemon
    await d.dispatch(envelope("box", mda_user="", mda_exec="|/usr/bin/archive %{dest}"))
    await d.dispatch(envelope("box", mda_exec="/var/spool/100%/archive"))
    await d.dispatch(envelope("fwd", mda_exec="/home/alice/Mail/"))
    command, mbox_file, maildir = jobs
    queue_user = pwd.getpwnam(d.config.processes.queue_user) if os.geteuid() == 0 \
        else pwd.getpwuid(os.geteuid())
    assert (command.method, command.user.uid) == ("mda", queue_user.pw_uid)
    assert command.argv == ("/usr/bin/archive", "alice@example.test")
    assert (mbox_file.method, mbox_file.path_template, mbox_file.user.uid) == \
        ("file", "/var/spool/100%%/archive", 2001)
    assert (maildir.method, maildir.path_template) == ("maildir", "/home/alice/Mail/")


async def test_forward_only_without_a_target_and_a_loop_are_permanent(daemon):
    d, jobs = daemon
    with pytest.raises(PermFail):
        await d.dispatch(envelope("fwd"))
    Path(d.store.message_path(0x12345678)).write_bytes(
        b"Delivered-To: ALICE@example.test\r\nSubject: x\r\n\r\nbody\r\n")
    with pytest.raises(PermFail) as e:
        await d.dispatch(envelope("box"))
    assert (e.value.reply.code, e.value.reply.enhanced, e.value.reply.text) == (550, "5.4.6", "Loop detected")
    assert jobs == []


async def test_junk_files_a_message_marked_spam_in_the_junk_folder(daemon):
    d, jobs = daemon
    await d.dispatch(envelope("spamfiled"))
    message = d.store.message_path(0x12345678)
    message.write_bytes(b"Subject: x\r\nX-Spam:  YES \r\n\r\nX-Spam: no\r\n")
    await d.dispatch(envelope("spamfiled"))
    await d.dispatch(envelope("box"))                     # no junk option: where it always goes
    assert [j.path_template for j in jobs] == [None, "~/Maildir/.Junk", "~/Mail/%{dest.user}"]
