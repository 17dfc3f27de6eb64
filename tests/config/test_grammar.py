"""The whole grammar into the model: each good config's declarations, field by field.

tests/config/good/ holds one config per part of docs/configuration.md (also run through
OpenSMTPD's checker by `make conformance`); these tests pin what each line
becomes, so the layers reading the model (smtp, mda, mta) can rely on it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from postillion.config import load, parse
from postillion.config import files as files_module
from postillion.config.model import (
    DAYS,
    HOURS,
    MINUTES,
    ActionDecl,
    Criterion,
    ListenDecl,
    MtaLimit,
    Position,
    RelayHost,
)

GOOD = Path(__file__).parent / "good"


@pytest.fixture(autouse=True)
def fixed_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files_module, "default_hostname", lambda: "default.test")


def at(path: Path, line: int, column: int = 1) -> Position:
    return Position(str(path), line, column)


def test_listen_options() -> None:
    path = GOOD / "01-listen-options.conf"
    c = load(path)
    assert c.pkis["mail"].cert == "/etc/mail/certs/mx.example.org.crt"
    assert c.pkis["mail"].dhe == "auto"
    assert c.cas["clients"].cert == "/etc/mail/certs/ca.crt"
    assert c.listeners == (
        ListenDecl("lo", at(path, 9), port=10025, tls=True, pki=("mail",),
                   hostname="mx.example.org"),
        ListenDecl("lo", at(path, 10), port=10587, tls=True, tls_require=True, verify=True,
                   pki=("mail",), ca="clients", auth="required", auth_table="creds",
                   senders="allowed", masquerade=True),
        ListenDecl("lo", at(path, 11), smtps=True, pki=("mail",), auth="optional",
                   hostnames="names", tag="submission", mask_src=True),
        ListenDecl("127.0.0.1", at(path, 12), port=10026, family="inet4", no_dsn=True,
                   received_auth=True),
        ListenDecl("lo", at(path, 13), port=10027, family="inet6", tls=True,
                   tls_require=True, pki=("mail",), auth="required"),
        ListenDecl("localhost", at(path, 14), port=10028, smtps=True, verify=True,
                   pki=("mail",), ca="clients"),
    )
    assert c.listeners[2].effective_port == 465


def test_listen_2012_ssl_and_certificate_and_several_pki() -> None:
    c = parse("pki a cert /a.crt\npki a key /a.key\npki b cert /b.crt\npki b key /b.key\n"
              "listen on lo tls pki a pki b\n"
              "listen on lo ssl certificate c auth-optional <t>\ntable t { u = p }\n", "x.conf")
    assert c.listeners[0].pki == ("a", "b")
    smtps, starttls = c.listeners[1:]
    assert (smtps.port, smtps.smtps, smtps.tls, smtps.pki) == (465, True, False, ("c",))
    assert (starttls.port, starttls.smtps, starttls.tls, starttls.auth) == (25, False, True,
                                                                            "optional")
    assert (c.pkis["c"].cert, c.pkis["c"].key) == ("/etc/mail/certs/c.crt",
                                                   "/etc/mail/certs/c.key")


def test_local_actions() -> None:
    path = GOOD / "02-local-actions.conf"
    a = load(path).actions
    assert a["md"] == ActionDecl(
        "md", "maildir", at(path, 5),
        path="/var/vmail/%{rcpt.domain}/%{rcpt.user:lowercase|strip}", junk=True,
        alias="aliases", userbase="users")
    assert (a["home"].path, a["home"].user, a["home"].ttl) == ("~/Maildir", "vmail", 2 * DAYS)
    assert (a["mb"].method, a["mb"].alias) == ("mbox", "aliases")
    assert (a["lm"].destination, a["lm"].rcpt_to, a["lm"].virtual) == ("127.0.0.1:24", True,
                                                                        "aliases")
    assert a["ls"].destination == "/var/run/dovecot/lmtp"
    assert (a["pm"].command, a["pm"].wrapper) == ("/usr/bin/procmail -f %{sender}", "sandbox")
    assert (a["fo"].method, a["eo"].method, a["eo"].ttl) == ("forward-only", "expand-only",
                                                            30 * MINUTES)
    assert load(path).mda.wrappers == (("sandbox", "/usr/local/bin/sandbox --strict"),)


def test_relay_actions() -> None:
    path = GOOD / "03-relay-actions.conf"
    c = load(path)
    a = c.actions
    assert a["mx"] == ActionDecl("mx", "relay", at(path, 9))
    assert a["smart"].host == RelayHost("smtp+tls", "relay.example.org", 587, "bleh")
    assert (a["smart"].auth, a["smart"].pki, a["smart"].ca) == ("secrets", "client", "relays")
    assert a["smtps"].host == RelayHost("smtps", "[192.0.2.25]")
    assert a["smtps"].host.effective_port == 465
    assert (a["smtps"].tls, a["smtps"].no_verify, a["smtps"].helo) == (True, True,
                                                                        "mx.example.org")
    assert (a["plain"].host.scheme, a["plain"].mail_from) == ("smtp+notls", "@example.org")
    assert c.tables[a["opp"].src].items == ("192.0.2.10",)
    assert (a["opp"].host.scheme, a["opp"].ttl) == ("smtp", 1 * DAYS)
    assert a["lmtp"].host == RelayHost("lmtp", "127.0.0.1", 24)
    assert (a["bydom"].domain, a["bydom"].helo_src, a["bydom"].src) == ("routes", "helos",
                                                                       "sources")
    assert (a["backup"].backup, a["backup"].backup_mx, a["backup"].tls) == (
        True, "mx2.example.org", True)
    assert (a["backup2"].backup, a["backup2"].backup_mx) == (True, None)


def test_match_criteria() -> None:
    path = GOOD / "04-match-criteria.conf"
    m = load(path).matches
    kinds = [[(c.kind, c.negate, c.regex) for c in rule.criteria] for rule in m]
    assert kinds[0] == [("from-socket", False, False), ("for-local", False, False)]
    assert kinds[3][1] == ("for-domain", True, False)
    assert m[3].action is None
    assert m[4].criteria[0] == Criterion("from-rdns", at(path, 12, 7))
    assert m[6].criteria[0] == Criterion("from-rdns", at(path, 14, 7), table="names",
                                         regex=True)
    assert m[7].criteria[0].kind == "from-auth" and m[7].criteria[0].table is None
    assert [c.kind for c in m[11].criteria] == ["from-any", "for-any", "auth"]
    assert m[12].criteria[2] == Criterion("auth", at(path, 20, 7), negate=True, table="users")
    assert [c.kind for c in m[14].criteria] == ["from-any", "for-any", "mail-from", "rcpt-to"]
    assert [(c.kind, c.negate) for c in m[18].criteria][2] == ("tls", True)
    assert m[19].criteria[0] == Criterion("from-any", at(path, 27, 7), negate=True)
    assert m[20].criteria[1].regex
    assert [c.kind for c in m[21].criteria] == ["from-local", "for-local"]  # defaults


def test_globals() -> None:
    c = load(GOOD / "05-globals.conf")
    assert (c.limits.max_message_size, c.limits.max_mails, c.limits.max_rcpt) == (
        50 * 1024 * 1024, 50, 500)
    assert (c.limits.sub_addr_delim, c.limits.ciphers) == ("-", "HIGH:!aNULL:!MD5:!RC4")
    assert (c.queue.ttl, c.queue.compression) == (5 * DAYS, True)
    assert c.bounce.warn_interval == (1 * HOURS, 6 * HOURS, 1 * DAYS)
    assert c.mta.max_deferred == 200
    assert c.mta.limits == (MtaLimit("max-conn-per-host", 5),
                            MtaLimit("max-conn-per-host", 2, "example.org"),
                            MtaLimit("session-mail-max", 10, "example.org"))
    assert (c.mda.max_session, c.mda.max_session_per_user) == (20, 3)
    assert c.scheduler.max_inflight == 1000


def test_2012_grammar_compiles_by_the_mapping() -> None:
    path = GOOD / "06-2012-grammar.conf"
    c = load(path)
    assert c.grammar == "2012"
    assert c.queue.ttl == 3 * DAYS and c.limits.max_message_size == 20 * 1024 * 1024
    assert c.bounce.warn_interval == (2 * HOURS, 1 * DAYS)
    rules = [(tuple(x.kind for x in m.criteria), m.action and c.actions[m.action].method)
             for m in c.matches]
    assert rules[0] == (("from-any", "for-domain"), None)                  # reject
    assert rules[1] == (("from-local", "for-any", "tag"), "relay")         # tagged, first
    assert rules[2] == (("from-any", "for-any", "auth", "tag"), "relay")   # ... or authenticated
    mbox = c.actions[c.matches[3].action]
    assert (mbox.method, mbox.alias) == ("mbox", "aliases")
    vm = c.actions[c.matches[5].action]
    assert (vm.path, vm.userbase) == ("/var/vmail/%u", "vusers")
    mda = c.matches[6]
    assert [x.kind for x in mda.criteria] == ["from-src", "for-domain", "mail-from"]
    assert (c.actions[mda.action].command, c.actions[mda.action].virtual,
            c.actions[mda.action].ttl) == ("/usr/bin/procmail -f -", "vmap", 1 * DAYS)
    assert c.actions[c.matches[7].action].destination == "127.0.0.1:24"   # deliver to lmtp
    assert c.actions[c.matches[8].action].method == "lmtp"                # relay via lmtp://
    backup = c.matches[9]
    assert [x.kind for x in backup.criteria] == ["from-any", "for-domain", "rcpt-to"]
    assert backup.criteria[2].table == "backup_rcpts"
    assert (c.actions[backup.action].backup, c.actions[backup.action].backup_mx) == (
        True, "mx.example.org")
    out = c.actions[c.matches[10].action]
    assert (out.mail_from, out.src, out.helo_src) == ("@example.org", "sources", "helos")
    via = c.actions[c.matches[12].action]
    assert (via.host, via.pki, via.auth) == (
        RelayHost("smtp+tls", "relay.example.org", None, "bleh"), "mx.example.org", "secrets")
    assert c.actions[c.matches[15].action].host == RelayHost("smtps", "relay2.example.org", 465)


@pytest.mark.parametrize(("written", "meant"), [
    ("smtp://h.example", RelayHost("smtp", "h.example")),
    ("h.example:2525", RelayHost("smtp", "h.example", 2525)),
    ("smtp+tls://h.example", RelayHost("smtp", "h.example")),
    ("tls://h.example", RelayHost("smtp+tls", "h.example")),
    ("smtps+auth://l@h.example", RelayHost("smtps", "h.example", None, "l")),
    ("ssl://h.example", RelayHost("ssl", "h.example")),
    ("[IPv6:2001:db8::1]:26", RelayHost("smtp", "[IPv6:2001:db8::1]", 26)),
])
def test_2012_relay_url_schemes_mean_what_they_meant(written: str, meant: RelayHost) -> None:
    auth = " auth <t>\ntable t { l = x }" if meant.label else ""
    c = parse(f"accept for any relay via {written}{auth}\n", "x.conf")
    assert c.actions[c.matches[0].action].host == meant


def test_2012_relay_takes_the_5x_spellings() -> None:
    c = load(GOOD / "06-2012-grammar.conf")
    five = c.actions[c.matches[16].action]
    assert (five.src, five.helo_src, five.pki) == ("sources", "helos", "mx.example.org")
    helo = c.actions[c.matches[18].action]
    assert (helo.helo, helo.host) == ("out.example.org", RelayHost("smtp", "relay3.example.org"))
