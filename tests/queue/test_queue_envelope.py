"""Envelope values, ids and the self-validating file format."""

from __future__ import annotations

import hashlib
import json

import pytest

from postillion.queue.envelope import (
    DEFAULT_TTL,
    Envelope,
    EnvelopeCorrupt,
    format_evpid,
    format_msgid,
    new_evpid,
    new_msgid,
    parse_evpid,
    parse_msgid,
)

MSGID = 0x1A2B3C4D
EVPID = MSGID << 32 | 0x00C0FFEE


def full_envelope() -> Envelope:
    """Every field away from its default, so a dropped field shows."""
    return Envelope(
        id=EVPID,
        msgid=MSGID,
        dispatcher="deliver-local",
        rcpt="Al@Example.org",
        dest="al@example.org",
        type="mta",
        tag="submission",
        smtpname="mx.example.org",
        helo="client.example.net",
        hostname="client.example.net",
        username="gilles",
        sockaddr="192.0.2.7",
        sender="gilles@example.net",
        ctime=1764079262.25,
        last_try=1764079300.5,
        last_bounce=1764079400.0,
        ttl=86400.0,
        retry=3,
        flags=frozenset({"authenticated", "tls"}),
        dsn_notify=frozenset({"FAILURE", "DELAY"}),
        dsn_ret="HDRS",
        dsn_envid="QQ314159",
        dsn_orcpt="rfc822;al@example.org",
        esc_class=4,
        esc_code="4.2.0",
        errorline="451 4.2.0 Mailbox busy",
        mda_exec="/usr/bin/procmail -f -",
        mda_subaddress="lists",
        mda_user="vmail",
        bounce_type="delayed",
        bounce_delay=14400.0,
        bounce_ttl=604800.0,
    )


def resign(obj: dict) -> bytes:
    """A file with a valid checksum over arbitrary JSON (a future or hostile writer)."""
    body = json.dumps(obj).encode() + b"\n"
    return body + b"sha256=" + hashlib.sha256(body).hexdigest().encode() + b"\n"


SAMPLE = full_envelope().to_bytes()


def test_round_trip_keeps_every_field():
    envelope = full_envelope()
    assert Envelope.from_bytes(envelope.to_bytes()) == envelope


def test_round_trip_defaults_and_null_sender():
    envelope = Envelope.new(MSGID, dispatcher="local", rcpt="a@b.example", dest="a@b.example")
    again = Envelope.from_bytes(envelope.to_bytes())
    assert again == envelope
    assert again.sender == "" and again.ttl == DEFAULT_TTL and again.flags == frozenset()
    assert again.expires == again.ctime + DEFAULT_TTL


def test_file_uses_68_names_and_hex_ids():
    body = SAMPLE.split(b"\n")[0]
    obj = json.loads(body)
    assert obj["version"] == 1
    assert obj["id"] == "1a2b3c4d00c0ffee" and obj["msgid"] == "1a2b3c4d"
    for key in ("last-try", "last-bounce", "dsn-notify", "esc-class", "mda-user", "bounce-ttl"):
        assert key in obj
    assert obj["flags"] == ["authenticated", "tls"]


def test_non_ascii_address_round_trips():
    envelope = full_envelope().replace(rcpt="josé@exämple.org", dest="josé@exämple.org")
    assert Envelope.from_bytes(envelope.to_bytes()) == envelope


def test_every_truncation_is_detected():
    for length in range(len(SAMPLE)):
        with pytest.raises(EnvelopeCorrupt):
            Envelope.from_bytes(SAMPLE[:length])


@pytest.mark.parametrize("mask", [0x01, 0x20, 0x80, 0xFF])
def test_every_flipped_byte_is_detected(mask):
    for offset in range(len(SAMPLE)):
        damaged = bytearray(SAMPLE)
        damaged[offset] ^= mask
        with pytest.raises(EnvelopeCorrupt):
            Envelope.from_bytes(bytes(damaged))


@pytest.mark.parametrize(
    "data",
    [
        SAMPLE + b"x\n",
        SAMPLE + SAMPLE,
        SAMPLE.replace(b"\nsha256=", b"\nsha1=", 1),
        SAMPLE.split(b"\n")[0] + b"\n",
        b"",
        b"\n",
        b"\x00" * 512,
    ],
    ids=["trailing-line", "doubled", "other-digest", "no-checksum", "empty", "newline", "zeros"],
)
def test_torn_or_foreign_content_is_detected(data):
    with pytest.raises(EnvelopeCorrupt):
        Envelope.from_bytes(data)


def good_obj() -> dict:
    return json.loads(SAMPLE.split(b"\n")[0])


@pytest.mark.parametrize(
    "change",
    [
        {"version": 2},
        {"version": None},
        {"version": "1"},
        {"id": 1},
        {"id": "1a2b3c4d00C0FFEE"},
        {"id": "ffffffff00c0ffee"},  # not of this msgid
        {"retry": "3"},
        {"retry": True},
        {"ctime": "yesterday"},
        {"type": "lmtp"},
        {"flags": "tls"},
        {"flags": ["tls", "shiny"]},
        {"rcpt": "a@b\r\nRCPT TO:<evil@example>"},
        {"unknown-field": 1},
    ],
    ids=repr,
)
def test_valid_checksum_but_bad_content_is_corrupt(change):
    obj = good_obj()
    obj.update(change)
    with pytest.raises(EnvelopeCorrupt):
        Envelope.from_bytes(resign(obj))


@pytest.mark.parametrize("key", ["version", "id", "msgid", "dispatcher", "rcpt", "dest", "ctime", "type"])
def test_missing_required_field_is_corrupt(key):
    obj = good_obj()
    del obj[key]
    with pytest.raises(EnvelopeCorrupt):
        Envelope.from_bytes(resign(obj))


def test_missing_optional_field_takes_its_default():
    obj = good_obj()
    del obj["mda-user"]
    assert Envelope.from_bytes(resign(obj)).mda_user == ""


def test_non_finite_number_is_corrupt():
    text = json.dumps(good_obj()).replace('"ttl": 86400.0', '"ttl": NaN')
    body = text.encode() + b"\n"
    data = body + b"sha256=" + hashlib.sha256(body).hexdigest().encode() + b"\n"
    with pytest.raises(EnvelopeCorrupt):
        Envelope.from_bytes(data)


def test_ids():
    for _ in range(100):
        msgid = new_msgid()
        evpid = new_evpid(msgid)
        assert 0 < msgid < 1 << 32 and evpid >> 32 == msgid and evpid & 0xFFFFFFFF
        assert len(format_msgid(msgid)) == 8 and len(format_evpid(evpid)) == 16
        assert parse_msgid(format_msgid(msgid)) == msgid
        assert parse_evpid(format_evpid(evpid)) == evpid
    assert format_msgid(0x1F) == "0000001f"
    for bad in ("1F", "0000001F", "000001f", "-000001f", "0000001g"):
        with pytest.raises(ValueError):
            parse_msgid(bad)


@pytest.mark.parametrize(
    "change",
    [
        {"id": (MSGID + 1) << 32 | 5},
        {"id": MSGID << 32},
        {"type": "smtp"},
        {"dispatcher": ""},
        {"dest": "a@b\nc"},
        {"retry": -1},
        {"ctime": float("inf")},
        {"flags": frozenset({"nope"})},
        {"dsn_ret": "full"},
        {"esc_class": 3},
    ],
    ids=repr,
)
def test_invalid_envelope_is_refused_when_built(change):
    with pytest.raises((ValueError, TypeError)):
        full_envelope().replace(**change)


def test_int_times_are_normalised_and_sets_frozen():
    envelope = Envelope(id=EVPID, msgid=MSGID, dispatcher="d", rcpt="r", dest="r", ctime=5, flags={"tls"})
    assert type(envelope.ctime) is float and envelope.flags == frozenset({"tls"})
