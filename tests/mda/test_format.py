"""Format specifiers as a delivery expands them (docs/configuration.md)."""

from __future__ import annotations

import pytest

from postillion.mda.format import FormatEnv, FormatError, expand

ENV = FormatEnv(sender="", rcpt="Bob+Lists@Example.Test", dest="bob@example.test",
                username="bob", directory="/srv/100%/bob")


@pytest.mark.parametrize(("template", "expected"), [
    ("%{mbox.from}", "MAILER-DAEMON"),
    ("/m/%u/%%{rcpt}", "/m/bob/%{rcpt}"),
    ("/m/%{rcpt.user:lowercase|strip}", "/m/bob"),
    ("/m/%{rcpt.user:lowercase:strip}", "/m/bob"),
    ("%{user.directory}/Maildir", "/srv/100%/bob/Maildir"),   # the home is not escaped
    ("~/Mail/%{rcpt.domain:lowercase}", "/srv/100%/bob/Mail/example.test"),
    ("%{rcpt.user[0:3]}", "Bob"),
    ("%{rcpt.user[-5:]}", "Lists"),
])
def test_specifiers(template, expected):
    assert expand(template, ENV) == expected


def test_unknown_names_and_modifiers_are_errors():
    for template in ("%{nosuch}", "%{rcpt:shout}", "%{user.shell}"):
        with pytest.raises(FormatError):
            expand(template, ENV)


def test_a_delivered_to_of_the_recipient_in_the_header_is_a_loop():
    import io

    from postillion.mda.stream import delivered_to
    head = b"Received: x\r\nDelivered-To: Bob@Example.Test \r\nSubject: s\r\n\r\n"
    assert delivered_to(io.BytesIO(head + b"body\r\n"), "bob@example.test")
    assert not delivered_to(io.BytesIO(head), "alice@example.test")
    # Only the header section counts, however the reads fall.
    body = b"Subject: s\r\n\r\n" + b"x" * 70000 + b"\r\nDelivered-To: bob@example.test\r\n"
    assert not delivered_to(io.BytesIO(body), "bob@example.test")
    assert not delivered_to(io.BytesIO(b"Delivered-To: bob@example.test\n"), "bob@example.test",
                            limit=10)
