"""`match auth [<t>]`, `match from auth` and `match tls` (docs/configuration.md, match)."""

from __future__ import annotations

import asyncio

from postillion.config.model import ActionDecl, Config, Criterion, MatchDecl, Position
from postillion.rules import Ruleset, SessionFacts
from postillion.table.table import open_table

P = Position("t.conf", 1, 1)
ACTION = ActionDecl("a", "maildir", P)


def ruleset(*criteria: Criterion, tables=None) -> Ruleset:
    config = Config(path="t.conf", hostname="mx.test", actions={"a": ACTION},
                    matches=(MatchDecl((Criterion("from-any", P), Criterion("for-any", P), *criteria),
                                       P, "a"),))
    return Ruleset(config, tables or {})


def match(rules: Ruleset, facts: SessionFacts):
    return asyncio.run(rules.match(facts, "a@b.example", "c@d.example"))


ANON = SessionFacts("192.0.2.1", False)
GILLES = SessionFacts("192.0.2.1", False, authenticated=True, user="gilles", tls=True)


def test_auth_without_table():
    for kind in ("auth", "from-auth"):
        rules = ruleset(Criterion(kind, P))
        assert match(rules, ANON) is None
        assert match(rules, GILLES) is ACTION
    assert match(ruleset(Criterion("auth", P, negate=True)), ANON) is ACTION


def test_auth_with_table():
    async def go():
        table = open_table("users", "static", None, items=("gilles", "eric@example.org"))
        await table.open()
        rules = ruleset(Criterion("auth", P, table="users"), tables={"users": table})
        other = SessionFacts("192.0.2.1", False, authenticated=True, user="marc")
        mailaddr = SessionFacts("192.0.2.1", False, authenticated=True, user="eric@example.org")
        return [await rules.match(f, "a@b", "c@d") for f in (GILLES, other, mailaddr, ANON)]

    assert asyncio.run(go()) == [ACTION, None, ACTION, None]


def test_tls():
    rules = ruleset(Criterion("tls", P))
    assert match(rules, ANON) is None and match(rules, GILLES) is ACTION
