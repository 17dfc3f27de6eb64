"""The bounce hooks: envelopes given up on become one DSN per message and
sender, queued through `send`; no DSN for the null sender or NOTIFY=NEVER;
a DSN not queued keeps its envelopes; one refused for good drops them."""

from __future__ import annotations

import asyncio
import email
import email.policy

import pytest

from postillion.daemon.bounces import Bouncer
from postillion.errors import Reply, TempFail

from .test_queue_scheduler import queue_with


class Sent:
    def __init__(self, reply: Reply = Reply(250, "2.0.0", "queued")) -> None:
        self.calls: list[tuple[str, tuple[str, ...], bytes]] = []
        self.reply = reply

    async def __call__(self, sender, rcpts, data) -> Reply:
        self.calls.append((sender, tuple(rcpts), data))
        return self.reply


def failed(envelope):
    return envelope.replace(esc_class=5, esc_code="5.1.1", errorline="550 5.1.1 No such user")


async def test_failures_of_one_message_make_one_dsn(tmp_path):
    store, envelopes = await queue_with(tmp_path, nrcpt=3)
    sent = Sent()
    bouncer = Bouncer(store, "mx.example.org", sent, group_delay=0.05)
    await asyncio.gather(*(bouncer.failed(failed(e)) for e in envelopes))
    [(sender, rcpts, data)] = sent.calls
    assert (sender, rcpts) == ("", ("a@example.net",))
    dsn = email.message_from_bytes(data, policy=email.policy.default)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn["Subject"] == "Delivery status notification: failed"
    status = dsn.get_payload()[1].as_string()
    assert status.count("Action: failed") == 3 and "Status: 5.1.1" in status


@pytest.mark.parametrize("fields", [dict(sender=""), dict(dsn_notify=frozenset({"NEVER"})),
                                    dict(dsn_notify=frozenset({"DELAY"}))])
async def test_no_dsn_when_the_sender_gets_none(tmp_path, fields):
    store, (envelope,) = await queue_with(tmp_path)
    sent = Sent()
    await Bouncer(store, "mx.example.org", sent, group_delay=0.01).failed(
        failed(envelope.replace(**fields)))
    assert sent.calls == []


async def test_a_dsn_not_queued_keeps_the_envelope(tmp_path):
    store, (envelope,) = await queue_with(tmp_path)
    sent = Sent(Reply(451, "4.3.0", "try later"))
    with pytest.raises(TempFail):
        await Bouncer(store, "mx.example.org", sent, group_delay=0.01).failed(failed(envelope))


async def test_a_dsn_the_sender_refuses_for_good_is_dropped(tmp_path):
    store, (envelope,) = await queue_with(tmp_path)
    sent = Sent(Reply(550, "5.7.1", "no route to the sender"))
    await Bouncer(store, "mx.example.org", sent, group_delay=0.01).failed(failed(envelope))
    assert len(sent.calls) == 1


async def test_a_delay_warning_is_sent_once_per_interval(tmp_path):
    store, (envelope,) = await queue_with(tmp_path)
    sent = Sent()
    bouncer = Bouncer(store, "mx.example.org", sent, warn_intervals=(3600.0,), group_delay=0.01)
    late = envelope.replace(esc_class=4, esc_code="4.4.1", errorline="451 4.4.1 no answer")
    soon = await bouncer.delayed(late, late.ctime + 60)
    assert soon == late and sent.calls == []                   # interval not over yet
    saved = await bouncer.delayed(late, late.ctime + 7200)
    assert len(sent.calls) == 1 and saved.bounce_delay == 3600.0
    dsn = email.message_from_bytes(sent.calls[0][2], policy=email.policy.default)
    assert dsn["Subject"] == "Delivery status notification: delayed"
    assert await bouncer.delayed(saved, saved.ctime + 9000) == saved
    assert len(sent.calls) == 1                                # reported once


async def test_notify_success_gets_a_delivered_dsn_and_no_one_else_does(tmp_path):
    store, (envelope,) = await queue_with(tmp_path)
    sent = Sent()
    bouncer = Bouncer(store, "mx.example.org", sent, group_delay=0.01)
    await bouncer.succeeded(envelope)                       # no NOTIFY: nothing
    assert sent.calls == []
    await bouncer.succeeded(envelope.replace(dsn_notify=frozenset({"SUCCESS", "FAILURE"})))
    [(sender, rcpts, data)] = sent.calls
    assert (sender, rcpts) == ("", ("a@example.net",))
    dsn = email.message_from_bytes(data, policy=email.policy.default)
    assert dsn["Subject"] == "Delivery status notification: delivered"
    assert "Action: delivered" in dsn.get_payload()[1].as_string()
    relayed = envelope.replace(type="mta", dsn_notify=frozenset({"SUCCESS"}))
    await bouncer.succeeded(relayed)
    dsn = email.message_from_bytes(sent.calls[1][2], policy=email.policy.default)
    assert dsn["Subject"] == "Delivery status notification: relayed"
