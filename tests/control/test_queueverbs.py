"""A normal user's view of the queue (control/queueverbs.py), over a real
QueueStore: its own mail is what it enqueued locally (`username` its login
name, `sockaddr` local); everything else is "not found"."""

from __future__ import annotations

import os
import pwd
import time
from typing import Any

import pytest

from postillion.control.queueverbs import QueueVerbs
from postillion.control.server import Answer, ControlError, Peer, Request
from postillion.queue.envelope import format_evpid, format_msgid
from postillion.queue.store import QueueStore

NOBODY = pwd.getpwnam("nobody")


class Parts(Answer):
    """Collects the partial answers a verb sends (no socket)."""

    def __init__(self) -> None:
        self.parts: list[Any] = []

    async def part(self, result: Any) -> None:
        self.parts.append(result)


async def queued(store: QueueStore, username: str, sockaddr: str, text: bytes) -> int:
    incoming = await store.create()
    incoming.write(text)
    env = incoming.envelope(sender=f"{username or 'x'}@example.test", rcpt="r@example.test",
                            dest="r@example.test", dispatcher="local", username=username,
                            sockaddr=sockaddr, ctime=time.time())
    await store.commit(incoming, [env])
    return env.id


@pytest.fixture
async def verbs(tmp_path):
    store = QueueStore(tmp_path / "spool")
    await store.open()
    try:
        yield store, QueueVerbs(store, lambda: None)
    finally:
        await store.close()


async def test_a_user_sees_and_reads_only_its_own_local_mail(verbs):
    store, qv = verbs
    mine = await queued(store, NOBODY.pw_name, "local", b"Subject: mine\r\n\r\nmine\r\n")
    over_smtp = await queued(store, NOBODY.pw_name, "127.0.0.1", b"Subject: smtp\r\n\r\nx\r\n")
    other = await queued(store, "root", "local", b"Subject: root's\r\n\r\nx\r\n")
    user = Peer(pid=1, uid=NOBODY.pw_uid, gid=NOBODY.pw_gid)
    assert not user.admin and user.name == NOBODY.pw_name

    listing = await qv.show_queue(Request(user, "show queue", ()), Parts())
    assert [e["evpid"] for e in listing["envelopes"]] == [format_evpid(mine)]
    shown = await qv.show_envelope(Request(user, "show envelope", (format_evpid(mine),)), Parts())
    assert shown["id"] == format_evpid(mine) and shown["runstate"] == "offline"
    parts = Parts()
    await qv.show_message(Request(user, "show message", (format_msgid(mine >> 32),)), parts)
    assert "mine" in "".join(p["data"] for p in parts.parts)
    for evpid in (over_smtp, other):
        with pytest.raises(ControlError) as refused:
            await qv.show_envelope(Request(user, "show envelope", (format_evpid(evpid),)), Parts())
        assert refused.value.status == "not-found"
        with pytest.raises(ControlError):
            await qv.show_message(Request(user, "show message", (format_evpid(evpid),)), Parts())

    admin = Peer(pid=1, uid=os.getuid(), gid=os.getgid())
    everything = await qv.show_queue(Request(admin, "show queue", ()), Parts())
    assert {e["evpid"] for e in everything["envelopes"]} == {format_evpid(e) for e in (mine, over_smtp, other)}
