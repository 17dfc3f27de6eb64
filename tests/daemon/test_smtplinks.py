"""The queue's ends of its channels to the smtp processes
(daemon/smtplinks.py), against scripted smtp ends over real socketpairs:
commits are handed on, an Inject is answered, and one whose smtp process
dies goes to the next (or the one that replaces it) without waiting out
its timeout."""

from __future__ import annotations

import asyncio
import os
import socket

from postillion import channel as ch
from postillion.daemon.smtplinks import SmtpLinks
from postillion.errors import Reply

MESSAGE = b"Subject: bounce\r\n\r\nbody\r\n"


class FakeSmtp:
    """An smtp process's end: records each Inject (and its message) and
    answers 250, or never when `silent`."""

    def __init__(self, sock: socket.socket, silent: bool = False) -> None:
        self.seen: list[tuple[ch.Inject, bytes]] = []
        self.silent = silent
        self.channel = ch.Channel(sock, self._on_frame, "fake smtp")

    async def _on_frame(self, frame: ch.Frame) -> None:
        assert isinstance(frame, ch.Inject) and len(frame.fds) == 1
        self.seen.append((frame, os.pread(frame.fds[0], 1000, 0)))
        if not self.silent:
            self.channel.send(ch.Injected(frame.id, 250, "2.0.0", "queued"))


def attach(links: SmtpLinks, silent: bool = False) -> FakeSmtp:
    ours, theirs = socket.socketpair()
    links.listen(ours)
    return FakeSmtp(theirs, silent)


async def nothing(frame: ch.Committed) -> None:
    pass


async def test_an_inject_is_answered_and_commits_are_handed_on():
    got: list[ch.Committed] = []

    async def committed(frame: ch.Committed) -> None:
        got.append(frame)

    links = SmtpLinks(committed)
    smtp = attach(links)
    assert await links.send("", ["alice@example.test"], MESSAGE) == Reply(250, "2.0.0", "queued")
    [(frame, data)] = smtp.seen
    assert (frame.sender, frame.rcpts, data) == ("", ("alice@example.test",), MESSAGE)
    smtp.channel.send(ch.Committed(("{}",)))
    while not got:
        await asyncio.sleep(0.01)
    assert got == [ch.Committed(("{}",))]
    links.close()


async def test_an_inject_whose_smtp_process_dies_goes_to_the_next():
    links = SmtpLinks(nothing)
    frozen = attach(links, silent=True)
    task = asyncio.create_task(links.send("", ["alice@example.test"], MESSAGE))
    while not frozen.seen:
        await asyncio.sleep(0.01)
    frozen.channel.close()                  # dies holding it
    await asyncio.sleep(0.05)
    assert not task.done()                  # waiting for a successor, not failed
    successor = attach(links)
    assert (await asyncio.wait_for(task, 5)).code == 250
    assert [data for _, data in successor.seen] == [MESSAGE]
    links.close()


async def test_tries_and_the_wait_for_an_smtp_process_are_bounded():
    links = SmtpLinks(nothing, tries=2, link_wait=0.2)
    assert (await links.send("", ["a@example.test"], MESSAGE)).text == \
        "No smtp process to queue the message"
    task = asyncio.create_task(links.send("", ["a@example.test"], MESSAGE))
    for _ in range(2):
        smtp = attach(links, silent=True)
        while not smtp.seen:
            await asyncio.sleep(0.01)
        smtp.channel.close()
    reply = await asyncio.wait_for(task, 5)
    assert (reply.code, reply.text) == (451, "Not queued: the smtp process went away")
    links.close()


async def test_an_unanswered_inject_times_out():
    links = SmtpLinks(nothing, answer_timeout=0.1)
    attach(links, silent=True)
    reply = await links.send("", ["a@example.test"], MESSAGE)
    assert (reply.code, reply.text) == (451, "Not queued: the smtp process did not answer")
    links.close()


async def test_a_draining_smtp_process_gets_no_inject_but_its_commits_count():
    """After a reload the queue takes the old smtp processes' commits but
    hands its bounces to the new ones (their rules are the new ones)."""
    got: list[ch.Committed] = []

    async def committed(frame: ch.Committed) -> None:
        got.append(frame)

    links = SmtpLinks(committed)
    ours, theirs = socket.socketpair()
    links.listen(ours, inject=False)
    old = FakeSmtp(theirs)
    new = attach(links)
    for _ in range(3):
        assert await links.send("", ["alice@example.test"], MESSAGE) == Reply(250, "2.0.0", "queued")
    assert len(new.seen) == 3 and old.seen == []
    old.channel.send(ch.Committed(("{}",)))
    async with asyncio.timeout(10):
        while not got:
            await asyncio.sleep(0.01)
    links.close()
