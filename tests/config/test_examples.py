"""The example configs (tests/config/examples): they parse, B and C mean the same,
--convert round-trips.

What "equal models" means for B (2012 grammar) and C (modern): the models
cannot be equal as objects -- B's actions are named `legacy-<hash>`, C's
`v1`, `out`, and B's userinfo values use the 2012 four-field form.
`normal.semantic()` compares them by content: positions dropped, anonymous
tables inlined, each match carrying its action's content instead of its
name, 2012 userinfo values rewritten to the three-field form they mean.

One real difference remains, and the example C has it, not the compiler: a 2012
`from local` is "local **or authenticated**" (docs/configuration.md), so B's three
`accept for domain ...` rules also take mail from an authenticated client
for the local domains; C writes `match for domain ...` (local only), so in
C an authenticated client's mail for example.org falls through to `match
auth from any for any action "out"` and is relayed.  The test states that
difference exactly: B's rules are C's plus one `auth from any` rule after
each local-domain rule.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from postillion.config import load, parse
from postillion.config import files as files_module
from postillion.config.normal import normalise, semantic, to_modern

EXAMPLES = Path(__file__).parent / "examples"
GOOD = Path(__file__).parent / "good"
ALL_GOOD = sorted([*EXAMPLES.glob("*.conf"), *GOOD.glob("*.conf")])


@pytest.fixture(autouse=True)
def fixed_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files_module, "default_hostname", lambda: "default.test")


def test_example_a_modern_sqlite() -> None:
    config = load(EXAMPLES / "A-modern-sqlite.conf")
    assert config.grammar == "modern"
    assert [(lst.port, lst.tls, lst.tls_require, lst.auth, lst.auth_table)
            for lst in config.listeners] == [
        (None, True, False, "", None), (587, True, True, "required", "sql")]
    vmail = config.actions["vmail"]
    assert (vmail.method, vmail.virtual, vmail.userbase) == ("maildir", "sql", "sql")
    assert vmail.path == "/var/vmail/%{rcpt.domain}/%{rcpt.user:lowercase|strip}"
    assert config.actions["out"].method == "relay"
    assert [c.kind for c in config.matches[1].criteria] == ["from-any", "for-any", "auth"]


def test_example_b_2012_grammar() -> None:
    config = load(EXAMPLES / "B-2012-virtual.conf")
    assert config.grammar == "2012"
    names = list(config.actions)
    assert all(n.startswith("legacy-") and len(n) == len("legacy-") + 8 for n in names)
    relay = config.actions[names[3]]
    assert relay.host is not None and relay.host.url() == "smtp+tls://bleh@relay.example.org"
    assert relay.auth == "out_auth"
    assert config.pkis["mx.example.org"].cert == "/etc/mail/certs/mx.example.org.crt"
    assert config.listeners[0].pki == ("mx.example.org",)
    # from local (the default) = local or authenticated: two rules per accept.
    assert [tuple(c.kind for c in m.criteria) for m in config.matches[:2]] == [
        ("from-local", "for-domain"), ("from-any", "for-domain", "auth")]


def test_legacy_action_names_are_stable_under_reordering() -> None:
    one = parse("accept for local deliver to mbox\naccept for any relay\n", "a.conf")
    two = parse("accept   for any relay\n\n# moved\naccept for local deliver to mbox\n", "b.conf")
    assert set(one.actions) == set(two.actions)


def test_b_and_c_compile_to_equal_models() -> None:
    b = semantic(load(EXAMPLES / "B-2012-virtual.conf"))
    c = semantic(load(EXAMPLES / "C-modern-virtual.conf"))
    for key in b:
        if key != "matches":
            assert b[key] == c[key], key
    # The one difference, documented above: B lets AUTH clients deliver to
    # the local domains; C relays their mail.  B = C + those rules.
    auth_local = [m for m in b["matches"]
                  if [x["kind"] for x in m["criteria"]] == ["from-any", "for-domain", "auth"]]
    assert len(auth_local) == 3
    assert [m for m in b["matches"] if m not in auth_local] == c["matches"]


@pytest.mark.parametrize("path", ALL_GOOD, ids=lambda p: p.name)
def test_convert_round_trips(path: Path, tmp_path: Path) -> None:
    config = load(path)
    text = to_modern(config)
    # Written next to the original, so relative paths would resolve alike.
    again = parse(text, str(path.with_suffix(".converted")))
    assert again.grammar == "modern"
    assert normalise(again) == normalise(config)
    assert to_modern(again).splitlines()[1:] == text.splitlines()[1:]
