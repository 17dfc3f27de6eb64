"""A one-token-lookahead cursor over the lexer, with statement recovery.

The parser reports every error of a file in one run: when a statement is
wrong it records the error and calls `recover()`, which skips to the end of
the statement (the next NEWLINE outside the braces the statement opened) and
parsing goes on with the next line.  An ERROR token from the lexer (already
reported) makes `peek()` raise `Skip`, so the same line is not reported
twice.  One lookahead only, so `include` and macro definitions in included
files take effect exactly where they are written.
"""

from __future__ import annotations

from typing import Iterator

from postillion.config.lexer import STATEMENT_WORDS, Kind, Token
from postillion.config.model import Position


class Syntax(Exception):
    """A statement is wrong: record (pos, message), then recover."""

    def __init__(self, pos: Position, message: str) -> None:
        super().__init__(message)
        self.pos, self.message = pos, message


class Skip(Exception):
    """The lexer already reported this statement's problem: just recover."""




class Stream:
    """Tokens of one file with `peek`/`next`; counts braces per statement."""

    def __init__(self, tokens: Iterator[Token]) -> None:
        self._it = iter(tokens)
        self._ahead: Token | None = None
        self.depth = 0  # braces opened (and not closed) by this statement
        self.last: Token | None = None
        self.taken: list[Token] = []  # this statement's tokens so far (2012 action names)

    def raw_peek(self) -> Token:
        if self._ahead is None:
            self._ahead = next(self._it)
        return self._ahead

    def raw_next(self) -> Token:
        tok = self.raw_peek()
        if tok.kind is not Kind.EOF:  # EOF stays: every later peek sees it
            self._ahead = None
            self.last = tok
            if tok.kind is not Kind.NEWLINE:
                self.taken.append(tok)
        if tok.kind is Kind.PUNCT and tok.text == "{":
            self.depth += 1
        elif tok.kind is Kind.PUNCT and tok.text == "}":
            self.depth = max(0, self.depth - 1)
        return tok

    def peek(self) -> Token:
        tok = self.raw_peek()
        if tok.kind is Kind.ERROR:
            raise Skip()
        return tok

    def next(self) -> Token:
        self.peek()
        return self.raw_next()

    def start_statement(self) -> None:
        self.depth = 0
        self.last = None
        self.taken = []

    def at_statement_word(self) -> bool:
        """A new line starts with a statement keyword (unquoted)."""
        tok = self.raw_peek()
        return tok.kind is Kind.WORD and tok.text in STATEMENT_WORDS

    def recover(self) -> None:
        """Skip the rest of a broken statement, braces included.

        Stops after the statement's NEWLINE (at once if the statement had
        already reached it, as when a duplicate name is found at the end),
        or before a line that starts with a statement keyword while a `{` is
        still open, so one missing `}` is one error.  Consumes at least one
        token when the statement consumed none: the loop cannot spin.
        """
        while True:
            if self.last is not None and self.last.kind is Kind.NEWLINE \
                    and (self.depth == 0 or self.at_statement_word()):
                return
            if self.raw_peek().kind is Kind.EOF:
                return
            self.raw_next()

    # -- helpers the grammar uses ------------------------------------------

    def at_end(self) -> bool:
        """True at NEWLINE or EOF: the statement has no more words."""
        return self.peek().kind in (Kind.NEWLINE, Kind.EOF)

    def is_word(self, *words: str) -> bool:
        tok = self.peek()
        return tok.kind is Kind.WORD and (not words or tok.text in words)

    def is_punct(self, *puncts: str) -> bool:
        tok = self.peek()
        return tok.kind is Kind.PUNCT and tok.text in puncts

    def expect_word(self, word: str, after: str) -> Token:
        tok = self.peek()
        if tok.kind is not Kind.WORD or tok.text != word:
            raise Syntax(tok.pos, f'expected "{word}" after "{after}", got {tok.describe()}')
        return self.next()

    def expect_punct(self, punct: str, what: str) -> Token:
        tok = self.peek()
        if tok.kind is not Kind.PUNCT or tok.text != punct:
            raise Syntax(tok.pos, f'expected "{punct}" {what}, got {tok.describe()}')
        return self.next()

    def expect_value(self, what: str, keywords: frozenset[str] = frozenset()) -> Token:
        """A WORD or quoted STRING standing for a value (name, path, number).

        A bare word in `keywords` is refused: `listen on port 25` forgot the
        address, and saying so beats a puzzling error one word later.
        """
        tok = self.peek()
        if tok.kind not in (Kind.WORD, Kind.STRING):
            raise Syntax(tok.pos, f"expected {what}, got {tok.describe()}")
        if tok.kind is Kind.WORD and tok.text in keywords:
            raise Syntax(tok.pos, f"expected {what}, got the keyword {tok.describe()} "
                                  "(quote it to use it as a value)")
        return self.next()

    def expect_end(self, after: str) -> None:
        tok = self.peek()
        if tok.kind not in (Kind.NEWLINE, Kind.EOF):
            raise Syntax(tok.pos, f"expected end of line after {after}, got {tok.describe()}")
        if tok.kind is Kind.NEWLINE:
            self.next()
