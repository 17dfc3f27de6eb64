"""The mail log's value escaping: nothing a client sends forges or breaks a line."""

from __future__ import annotations

from postillion.log import escape


def test_escape_controls_quotes_and_non_utf8() -> None:
    assert escape("plain") == "plain"
    assert escape("a b") == '"a b"'
    assert escape('x"\\\r\nInjected: yes') == '"x\\"\\\\\\x0d\\x0aInjected: yes"'
    assert escape("jörg") == "jörg"
    # An AUTH user name with a byte that was not UTF-8 (surrogateescape):
    # written as \xNN, so the line still encodes as UTF-8 for syslog.
    user = b"gill\xffes".decode("utf-8", "surrogateescape")
    assert escape(user) == '"gill\\xffes"'
    escape(user).encode("utf-8")
    assert escape("\ud800") == '"\\ud800"'
