"""`match [[!]OPTION ...] (action NAME | reject)` (docs/configuration.md, match).

Criteria are put in their evaluation order (`from`, `for`, then the
others; `from local` and `for local` when left out), and a file may not
mix match rules with the 2012 grammar's accept/reject rules.
"""

from __future__ import annotations

from postillion.config.grammar.base import MATCH_OPTIONS, MATCH_WORDS, _at, _hint, _quote
from postillion.config.grammar.tables import TableGrammar
from postillion.config.lexer import Kind, Token
from postillion.config.model import Criterion, MatchDecl, Position
from postillion.config.stream import Stream, Syntax

FROM_KINDS = ("any", "local", "socket", "src", "rdns", "auth", "mail-from")
FOR_KINDS = ("any", "local", "domain", "rcpt-to")
# Kinds whose value is required / optional (the rest take none).
VALUE_REQUIRED = frozenset({"from-src", "from-mail-from", "for-domain", "for-rcpt-to",
                            "helo", "mail-from", "rcpt-to", "tag"})
VALUE_OPTIONAL = frozenset({"from-rdns", "from-auth", "auth"})


class MatchGrammar(TableGrammar):
    """`match` rules and their criteria; the check against mixing grammars."""

    def rules_grammar(self, grammar: str, pos: Position) -> None:
        """A rule of `grammar` ("match" or "2012") at pos: refuse mixing the two."""
        other = "2012" if grammar == "match" else "match"
        first = self.st.rule_grammar.get(other)
        if first is not None:
            if grammar == "match":
                raise Syntax(pos, "cannot mix match rules with accept/reject rules (2012 grammar,"
                                  f" first at {_at(first)}): convert them with postillion check"
                                  " --convert")
            raise Syntax(pos, "cannot mix accept/reject rules (2012 grammar) with match rules "
                              f"(first at {_at(first)}): write this rule as match")
        self.st.rule_grammar.setdefault(grammar, pos)

    def _match(self, s: Stream, kw: Token) -> None:
        self.rules_grammar("match", kw.pos)
        criteria: list[Criterion] = []
        firsts: dict[str, Position] = {}
        action: str | None = None
        while True:
            tok = s.peek()
            if tok.kind in (Kind.NEWLINE, Kind.EOF):
                raise Syntax(tok.pos, f'expected "action" or "reject" to end "match", '
                                      f"got {tok.describe()}")
            negation = None
            if tok.kind is Kind.PUNCT and tok.text == "!":
                negation = s.next()
                tok = s.peek()
                if not (tok.kind is Kind.WORD and tok.text in MATCH_OPTIONS):
                    raise Syntax(tok.pos, f"expected a match option ({', '.join(MATCH_OPTIONS)})"
                                          f' after "!", got {tok.describe()}')
            if tok.kind is Kind.WORD and tok.text in MATCH_OPTIONS:
                s.next()
                if tok.text in firsts:
                    raise Syntax(tok.pos, f"{_quote(tok.text)} given twice in one match "
                                          f"(first at {_at(firsts[tok.text])})")
                firsts[tok.text] = tok.pos
                criteria.append(self.criterion(s, tok, negation))
            elif tok.kind is Kind.WORD and tok.text == "action":
                s.next()
                name = s.expect_value('an action name after "action"', MATCH_WORDS)
                self.st.action_refs.append((name.text, name.pos))
                action = name.text
                s.expect_end(f"action {_quote(name.text)}")
                break
            elif tok.kind is Kind.WORD and tok.text == "reject":
                s.next()
                s.expect_end('"reject"')
                break
            else:
                known = [*MATCH_OPTIONS, "action", "reject"]
                hint = _hint(tok.text, known) if tok.kind is Kind.WORD else ""
                raise Syntax(tok.pos, 'expected "from", "for", "action" or "reject" in match, '
                                      f"got {tok.describe()}{hint}")
        self.st.matches.append(MatchDecl(self.ordered(criteria, kw.pos), kw.pos, action))

    def ordered(self, criteria: list[Criterion], pos: Position) -> tuple[Criterion, ...]:
        """from, for (defaults `from local`, `for local` at pos), then the others."""
        by_side = {c.kind.split("-", 1)[0]: c for c in criteria
                   if c.kind.startswith(("from-", "for-"))}
        frm = by_side.get("from")
        if frm is None:
            frm = Criterion("from-local", pos)
            self.use("match from local", pos)
        fr = by_side.get("for")
        if fr is None:
            fr = Criterion("for-local", pos)
            self.use("match for local", pos)
        rest = [c for c in criteria if c is not frm and c is not fr]
        return (frm, fr, *rest)

    def criterion(self, s: Stream, kw: Token, negation: Token | None) -> Criterion:
        """What follows a match option word (`from`, `for`, `auth`, `tag`, ...)."""
        pos = (negation or kw).pos
        negate = negation is not None
        kind = kw.text
        if kw.text in ("from", "for"):
            kinds = FROM_KINDS if kw.text == "from" else FOR_KINDS
            what = s.peek()
            if not (what.kind is Kind.WORD and what.text in kinds):
                hint = _hint(what.text, kinds) if what.kind is Kind.WORD else ""
                raise Syntax(what.pos, f"expected {', '.join(kinds[:-1])} or {kinds[-1]} after"
                                       f' "{kw.text}", got {what.describe()}{hint}')
            s.next()
            kind = f"{kw.text}-{what.text}"
        self.use(f"match {kind.replace('-', ' ', 1) if kw.text in ('from', 'for') else kind}",
                 pos)
        if negate:
            self.use("match !", negation.pos)  # type: ignore[union-attr]
        after = kind.replace("-", " ", 1) if kw.text in ("from", "for") else kind
        table, regex = None, False
        has_value = kind in VALUE_REQUIRED or (
            kind in VALUE_OPTIONAL and not s.at_end()
            and not (s.peek().kind is Kind.WORD and s.peek().text in MATCH_WORDS - {"regex"})
            and not s.is_punct("!"))
        if has_value:
            if s.is_word("regex"):
                regex_tok = s.next()
                self.use("match regex", regex_tok.pos)
                table, regex = self.table_ref(s, f"{after} regex", "regex"), True
            else:
                table = self.table_value(s, after)
        return Criterion(kind, pos, negate, table, regex)
