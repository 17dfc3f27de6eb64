"""One parser per service: what each accepts, and what it calls malformed."""

from __future__ import annotations

import ipaddress

import pytest

from postillion.table import (
    Addrname, Credentials, Domain, MalformedValue, Mailaddr, Mailaddrmap,
    Netaddr, Relayhost, Service, Source, Userinfo, parse_value,
)
from postillion.table.values import split_targets


@pytest.mark.parametrize("raw, targets", [
    ("alice", ("alice",)),
    ("alice, bob ,carol", ("alice", "bob", "carol")),
    ("alice,,bob,", ("alice", "bob")),
    ('"|/usr/bin/vacation -a allman"', ("|/usr/bin/vacation -a allman",)),
    ('|/bin/cmd "a, b", c', ('|/bin/cmd "a, b"', "c")),
    (r"a\,b, c", ("a,b", "c")),
    (r"a\\, b", ("a\\", "b")),
    ("error:550 no such list", ("error:550 no such list",)),
    (":include:/etc/mail/list, /var/mail/box, /home/x/Maildir/",
     (":include:/etc/mail/list", "/var/mail/box", "/home/x/Maildir/")),
])
def test_split_targets(raw, targets):
    assert split_targets(raw) == targets


@pytest.mark.parametrize("raw, reason", [
    ("", "no target"),
    (" , ,", "no target"),
    ('"unterminated, x', "unterminated double quote"),
    ("trailing\\", "lone backslash"),
])
def test_alias_malformed(raw, reason):
    with pytest.raises(MalformedValue, match=reason):
        parse_value(Service.ALIAS, "k", raw)


@pytest.mark.parametrize("raw, expected", [
    ("1000:1000:/home/alice", Userinfo("key", 1000, 1000, "/home/alice")),
    ("alice:1000:100:/home/alice", Userinfo("alice", 1000, 100, "/home/alice")),
    ("0:0:/", Userinfo("key", 0, 0, "/")),
    ("1000:1000:/srv/odd:home", Userinfo("key", 1000, 1000, "/srv/odd:home")),
    # numeric user name in the 2012 form
    ("1000:1000:1000:/home/x", Userinfo("1000", 1000, 1000, "/home/x")),
    (" 5:6:/h ", Userinfo("key", 5, 6, "/h")),
])
def test_userinfo(raw, expected):
    assert parse_value(Service.USERINFO, "key", raw) == expected


@pytest.mark.parametrize("raw, reason", [
    ("", "expected uid:gid:home"),
    ("1000:/home", "expected uid:gid:home"),
    ("abc:1000:/home", "decimal"),
    ("1000:1000:home", "absolute home"),
    ("x:y:1:/home", "decimal"),
    ("99999999999:1:/h", "uid out of range"),
    ("1:99999999999:/h", "gid out of range"),
    (":1:2:/home", "empty user name"),
    ("١:٢:/home", "decimal"),          # non-ASCII digits are not a uid
])
def test_userinfo_malformed(raw, reason):
    with pytest.raises(MalformedValue, match=reason) as info:
        parse_value(Service.USERINFO, "key", raw, table="users")
    message = str(info.value)
    assert message.startswith('table users: malformed userinfo value for key "key": ')
    if raw.strip():
        assert raw not in message


@pytest.mark.parametrize("raw, expected", [
    ("alice:$2b$12$hash", Credentials("alice", "$2b$12$hash")),
    ("$6$salt$hash", Credentials("key", "$6$salt$hash")),
    ("relayuser:pass:with:colons", Credentials("relayuser", "pass:with:colons")),
])
def test_credentials(raw, expected):
    assert parse_value(Service.CREDENTIALS, "key", raw) == expected


@pytest.mark.parametrize("raw, reason", [
    ("", "empty value"),
    (":secret", "empty user name"),
    ("user:", "empty secret"),
    ("user:sec\nret", "CR, LF or NUL"),
])
def test_credentials_malformed(raw, reason):
    with pytest.raises(MalformedValue, match=reason) as info:
        parse_value(Service.CREDENTIALS, "key", raw)
    if len(raw) > 1:
        assert raw not in str(info.value)


def test_credentials_secret_not_in_repr():
    assert "hunter2" not in repr(Credentials("alice", "hunter2"))


@pytest.mark.parametrize("raw, network", [
    ("192.0.2.1", "192.0.2.1/32"),
    ("192.0.2.0/24", "192.0.2.0/24"),
    ("192.0.2.9/24", "192.0.2.0/24"),
    ("[192.0.2.1]", "192.0.2.1/32"),
    ("2001:db8::/32", "2001:db8::/32"),
    ("IPv6:2001:db8::1", "2001:db8::1/128"),
    ("[IPv6:2001:db8::1]", "2001:db8::1/128"),
])
def test_netaddr(raw, network):
    assert parse_value(Service.NETADDR, "k", raw) == Netaddr(ipaddress.ip_network(network))


def test_netaddr_local():
    assert parse_value(Service.NETADDR, "k", "local") == Netaddr("local")
    assert parse_value(Service.NETADDR, "k", "LOCAL") == Netaddr("local")


@pytest.mark.parametrize("raw", ["", "10.0.0.0/33", "300.1.1.1", "example.org", "10.0.0.1 x"])
def test_netaddr_malformed(raw):
    with pytest.raises(MalformedValue):
        parse_value(Service.NETADDR, "k", raw)


def test_domain():
    assert parse_value(Service.DOMAIN, "k", " Example.ORG ") == Domain("example.org")
    assert parse_value(Service.DOMAIN, "k", "*.example.org") == Domain("*.example.org")
    for raw in ("", "two words", "a" * 256, "tab\there"):
        with pytest.raises(MalformedValue):
            parse_value(Service.DOMAIN, "k", raw)


@pytest.mark.parametrize("raw, expected", [
    ("user", Mailaddr("user", "")),
    ("@example.org", Mailaddr("", "example.org")),
    ("user@example.org", Mailaddr("user", "example.org")),
    ("user@*.example.org", Mailaddr("user", "*.example.org")),
    ("@", Mailaddr("", "")),
])
def test_mailaddr(raw, expected):
    value = parse_value(Service.MAILADDR, "k", raw)
    assert value == expected
    assert str(value) == raw


def test_mailaddr_malformed():
    for raw in ("", "user@", "a b@c"):
        with pytest.raises(MalformedValue):
            parse_value(Service.MAILADDR, "k", raw)


def test_mailaddrmap():
    assert parse_value(Service.MAILADDRMAP, "k", "alice@a.test, @b.test") == \
        Mailaddrmap((Mailaddr("alice", "a.test"), Mailaddr("", "b.test")))
    with pytest.raises(MalformedValue):
        parse_value(Service.MAILADDRMAP, "k", " , ")


def test_source_addrname_relayhost_regex():
    assert parse_value(Service.SOURCE, "", "192.0.2.1") == Source(ipaddress.ip_address("192.0.2.1"))
    assert parse_value(Service.SOURCE, "", "[2001:db8::1]") == \
        Source(ipaddress.ip_address("2001:db8::1"))
    with pytest.raises(MalformedValue):
        parse_value(Service.SOURCE, "", "192.0.2.0/24")
    assert parse_value(Service.ADDRNAME, "192.0.2.1", "mx.example.org") == Addrname("mx.example.org")
    assert parse_value(Service.RELAYHOST, "example.org", "smtp+tls://label@mx.example.org:587") == \
        Relayhost("smtp+tls://label@mx.example.org:587")
    assert parse_value(Service.REGEX, "", "(?i)^ab+$").pattern.fullmatch("ABB")
    with pytest.raises(MalformedValue, match="invalid regular expression"):
        parse_value(Service.REGEX, "", "(unclosed")
    with pytest.raises(MalformedValue, match="check-only"):
        parse_value(Service.AUTH, "", "x")


def test_malformed_key_is_escaped():
    with pytest.raises(MalformedValue) as info:
        parse_value(Service.USERINFO, "evil\r\nforged: line", "x")
    assert "\n" not in str(info.value) and "\r" not in str(info.value)
