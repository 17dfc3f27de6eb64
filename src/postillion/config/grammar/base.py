"""What every statement family of the grammar shares: the feature record,
quoting for messages, the words that end a value, and the option helpers.

`Grammar` is the base of the per-family classes of this package (tables,
pki, listen, action, match, options, mta); `Parser` (parser.py) inherits
them all, so the statement table, each statement's handler and `legacy.py`
reach one another through `self` (or `p`) as one parser, while each
family's grammar reads on its own in a file of a few hundred lines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from postillion.config.errors import did_you_mean
from postillion.config.lexer import Kind, Token
from postillion.config.model import Feature, Position
from postillion.config.stream import Stream, Syntax

if TYPE_CHECKING:
    from postillion.config.grammar.state import _State


# The match options, and the words that end a value in a match rule: here,
# not in match.py, because a table value (tables.py) stops at them too.
MATCH_OPTIONS = ("from", "for", "auth", "helo", "mail-from", "rcpt-to", "tag", "tls")
MATCH_WORDS = frozenset({*MATCH_OPTIONS, "action", "reject", "regex"})


def _quote(word: str) -> str:
    return f'"{word}"'


def _hint(word: str, candidates: Iterable[str]) -> str:
    close = did_you_mean(word, candidates)
    return f"; did you mean {_quote(close)}?" if close else ""


def _at(pos: Position) -> str:
    """Where something was first, as `file:line:column` (it may be an include)."""
    return str(pos)


class Grammar:
    """The helpers every statement family uses; `st` is the one parse's state."""

    st: _State

    def use(self, name: str, pos: Position) -> None:
        """Record that the config uses option `name` (for support.unsupported)."""
        self.st.features.append(Feature(name, pos))

    def _option(self, s: Stream, seen: dict[str, Position], what: str) -> Token:
        """The next option keyword, refusing one given twice."""
        opt = s.peek()
        if opt.kind is not Kind.WORD:
            raise Syntax(opt.pos, f"expected a {what}, got {opt.describe()}")
        if opt.text in seen:
            raise Syntax(opt.pos, f"{_quote(opt.text)} given twice (first at {_at(seen[opt.text])})")
        seen[opt.text] = opt.pos
        return s.next()

    @staticmethod
    def _host_name(tok: Token) -> str:
        if not tok.text or any(ch.isspace() for ch in tok.text):
            raise Syntax(tok.pos, f"expected a host name, got {tok.describe()}")
        return tok.text

    def _sub_option(self, s: Stream, after: str, known: Iterable[str]) -> Token:
        """The word after `smtp`, `queue`, ...; unknown ones get a hint."""
        opt = s.peek()
        known = list(known)
        if opt.kind is not Kind.WORD:
            raise Syntax(opt.pos, f'expected an option after "{after}" ({", ".join(known)}), '
                                  f"got {opt.describe()}")
        if opt.text not in known:
            raise Syntax(opt.pos, f"unknown {after} option {opt.describe()}{_hint(opt.text, known)}")
        return s.next()

    def _limit_pairs(self, s: Stream, after: str, known: Iterable[str]) -> list[tuple[Token, Token]]:
        """`KEY VALUE ...` after `X limit`: at least one pair, keys checked."""
        known = list(known)
        if s.at_end():
            tok = s.peek()
            raise Syntax(tok.pos, f'expected a limit after "{after}", got {tok.describe()}')
        pairs = []
        while not s.at_end():
            which = s.expect_value("a limit name")
            if which.kind is not Kind.WORD or which.text not in known:
                raise Syntax(which.pos, f"unknown {after.split()[0]} limit {which.describe()}"
                                        f"{_hint(which.text, known)}")
            pairs.append((which, s.expect_value(f'a number after "{which.text}"')))
        return pairs

    def _set_limit(self, field_name: str, value: object, at: Token) -> None:
        if field_name in self.st.limits:
            first = self.st.limits[field_name][1]
            raise Syntax(at.pos, f"{_quote(at.text)} already set at {_at(first)}")
        self.st.limits[field_name] = (value, at.pos)

    def _set(self, section: str, field_name: str, value: object, at: Token) -> None:
        key = (section, field_name)
        if key in self.st.options:
            first = self.st.options[key][1]
            raise Syntax(at.pos, f"{_quote(at.text)} already set at {_at(first)}")
        self.st.options[key] = (value, at.pos)
