"""smtpd.conf characters -> tokens with positions, macros defined and expanded.

Why macros live here and not in the parser: in smtpd.conf a macro is text,
not a value.  `ifs = "{ lo0, em0 }"` then `table t $ifs` must read as if the
braces had been typed, so `$name` is replaced by the tokens of its value
before the parser sees anything.  A definition (`name = "value"` alone on a
line, outside braces) is consumed here and never reaches the parser.

Lexical rules (docs/configuration.md, Files, lines and quoting):

- Newlines end statements and come out as NEWLINE tokens; `\\` + newline
  outside quotes joins lines (nothing is inserted: `foo\\` + `bar` is
  `foobar`, as in OpenSMTPD).  `#` outside quotes comments out the rest of
  the physical line; a comment never continues on the next line, so a stray
  `\\` at the end of a comment cannot swallow the next statement.
- Punctuation: `{ } , < > = => !`.  Everything else up to blanks or
  punctuation is a bare WORD (keywords, numbers, paths, `sqlite:/x`).
- `"..."` and `'...'` give a STRING, never a keyword; inside, `\\` escapes
  the quote, a blank or a newline; any other `\\` is kept (regexes).
- `$name` at the start of a word expands the macro (`$` inside a word is
  literal, so `a$b` stays as written); an undefined macro is an error.
  The value becomes whole tokens: `$db.test` is `$db` then `.test`, never
  glued (OpenSMTPD pastes text; tokens keep positions honest).
  Expansion is bounded in depth and size, so `a = "$a"` is an error, not a
  hang.  Macros given by `-D name=value` win over definitions in the file.

Errors go to a shared list and come out as an ERROR token, so the parser
skips the statement without reporting it twice.  Every loop advances over
the text or a bounded expansion: the lexer terminates on any input.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Iterator, MutableMapping

from postillion.config.errors import did_you_mean
from postillion.config.model import Position

MAX_EXPANSION_DEPTH = 8       # $a -> $b -> ... ; deeper is a loop in practice
MAX_EXPANSION_TOKENS = 4096   # tokens one `$name` may become
MACRO_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_NAME_CHAR = re.compile(r"[A-Za-z0-9_]")
_PUNCT = "{},<>!"

# Words that start a statement.  A line starting with one (unquoted) ends
# any `{` left open: the lexer and the parser's recovery agree on this, so
# one missing `}` is one error and the lines after it lex normally (keywords
# used as values must be quoted anyway).
STATEMENT_WORDS = frozenset({
    "table", "listen", "action", "match", "hostname", "smtp", "include",
    "pki", "ca", "queue", "bounce", "mta", "mda", "scheduler", "filter",
    "proc", "srs", "accept", "reject", "expire", "max-message-size", "bounce-warn",
})
_NOT_IN_WORD = frozenset(" \t\r\n\f\v{},<>!=#\"'")


class Kind(enum.Enum):
    """What a token is; the parser only ever sees the first six."""

    WORD = "word"          # bare: keyword, number, path, name
    STRING = "string"      # quoted: always a value
    PUNCT = "punct"        # { } , < > = => !
    NEWLINE = "newline"    # end of a statement
    EOF = "eof"
    ERROR = "error"        # already reported: skip the statement
    MACRO = "macro"        # `$name`, internal: expanded before leaving


@dataclass(frozen=True, slots=True)
class Token:
    """One token and where it starts (a macro's tokens: where `$` was)."""

    kind: Kind
    text: str
    pos: Position

    def describe(self) -> str:
        """The token as an error message names it: `"to"`, `end of line`."""
        if self.kind is Kind.NEWLINE:
            return "end of line"
        if self.kind is Kind.EOF:
            return "end of file"
        text = self.text if len(self.text) <= 40 else self.text[:37] + "..."
        shown = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                        for ch in text)
        return f'"{shown}"'


def _is_bad(ch: str) -> bool:
    """Control characters other than blanks have no place in a config."""
    code = ord(ch)
    return (code < 32 and ch not in " \t\r\n\f\v") or 0x7F <= code < 0xA0 or 0xD800 <= code < 0xE000


@dataclass(slots=True)
class _Budget:
    """Tokens and references one `$root` in the text may still produce."""

    root: str
    left: int = MAX_EXPANSION_TOKENS


class _Scanner:
    """Characters -> raw tokens (MACRO unexpanded).  One pass, always advances.

    With `fixed` set (re-scanning a macro value) every token and error is
    placed at the `$name` that is being expanded.
    """

    def __init__(
        self,
        text: str,
        file: str,
        errors: list[tuple[Position, str]],
        fixed: Position | None = None,
        context: str = "",
    ) -> None:
        self.text, self.file, self.errors = text, file, errors
        self.fixed, self.context = fixed, context
        self.i, self.line, self.col = 0, 1, 1

    def _pos(self) -> Position:
        return self.fixed or Position(self.file, self.line, self.col)

    def _error(self, pos: Position, message: str) -> Token:
        self.errors.append((pos, message + self.context))
        return Token(Kind.ERROR, "", pos)

    def _advance(self, n: int = 1) -> None:
        for ch in self.text[self.i : self.i + n]:
            if ch == "\n":
                self.line, self.col = self.line + 1, 1
            else:
                self.col += 1
        self.i += n

    def _peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.text[j] if j < len(self.text) else ""

    def __iter__(self) -> Iterator[Token]:
        text = self.text
        while self.i < len(text):
            ch = text[self.i]
            pos = self._pos()
            if ch in " \t\r\f\v":
                self._advance()
            elif ch == "\\" and self._peek(1) == "\n":
                self._advance(2)
            elif ch == "\\" and self._peek(1) == "\r" and self._peek(2) == "\n":
                self._advance(3)
            elif ch == "\n":
                self._advance()
                yield Token(Kind.NEWLINE, "\n", pos)
            elif ch == "#":
                end = text.find("\n", self.i)
                self._advance((len(text) if end < 0 else end) - self.i)
            elif ch in "\"'":
                yield self._quoted(ch, pos)
            elif ch in _PUNCT:
                self._advance()
                yield Token(Kind.PUNCT, ch, pos)
            elif ch == "=":
                arrow = self._peek(1) == ">"
                self._advance(2 if arrow else 1)
                yield Token(Kind.PUNCT, "=>" if arrow else "=", pos)
            elif ch == "$":
                yield self._macro(pos)
            elif _is_bad(ch):
                start = self.i
                while self.i < len(text) and _is_bad(text[self.i]):
                    self._advance()
                yield self._error(pos, f"unexpected character U+{ord(text[start]):04X}")
            else:
                yield self._word(pos)
        yield Token(Kind.EOF, "", self._pos())

    def _word(self, pos: Position) -> Token:
        out: list[str] = []
        text = self.text
        while self.i < len(text):
            ch = text[self.i]
            if ch == "\\" and self._peek(1) == "\n":
                self._advance(2)
                continue
            if ch in _NOT_IN_WORD or _is_bad(ch):
                break
            out.append(ch)
            self._advance()
        return Token(Kind.WORD, "".join(out), pos)

    def _macro(self, pos: Position) -> Token:
        self._advance()  # the `$`
        start = self.i
        while self.i < len(self.text) and _NAME_CHAR.match(self.text[self.i]):
            self._advance()
        name = self.text[start : self.i]
        if not name:
            return self._error(pos, 'expected a macro name after "$"')
        return Token(Kind.MACRO, name, pos)

    def _quoted(self, quote: str, pos: Position) -> Token:
        self._advance()  # opening quote
        out: list[str] = []
        bad: Position | None = None
        text = self.text
        while True:
            if self.i >= len(text) or text[self.i] == "\n":
                return self._error(pos, "unterminated quoted string")
            ch = text[self.i]
            if ch == quote:
                self._advance()
                break
            if ch == "\\":
                nxt = self._peek(1)
                if nxt in (quote, " ", "\t"):
                    out.append(nxt)
                    self._advance(2)
                    continue
                if nxt == "\n":
                    self._advance(2)
                    continue
            if _is_bad(ch) and bad is None:
                bad = self._pos()
                self._error(bad, f"unexpected character U+{ord(ch):04X} in quoted string")
            out.append(ch)
            self._advance()
        if bad is not None:
            return Token(Kind.ERROR, "", bad)
        return Token(Kind.STRING, "".join(out), pos)


class Lexer:
    """Tokens of one file, lazily, macros handled; shared `macros` dict.

    Lazy on purpose: the parser handles `include` when it reaches it, and a
    macro defined in an included file must be known to the lines after the
    `include`.  So this yields one logical line at a time and never reads
    ahead of the line the parser is on.

    `macros` is shared by a file and its includes; names in `fixed` (from
    `-D`) are not redefined by the file.
    """

    def __init__(
        self,
        text: str,
        file: str,
        macros: MutableMapping[str, str],
        errors: list[tuple[Position, str]],
        fixed: frozenset[str] = frozenset(),
    ) -> None:
        self.text, self.file, self.macros, self.errors = text, file, macros, errors
        self.fixed = fixed
        self.depth = 0  # open braces: a `k = v` inside { } is a map pair
        self._cache: dict[tuple[str, str], tuple[list[tuple[Kind, str]], list[str]]] = {}

    def __iter__(self) -> Iterator[Token]:
        line: list[Token] = []
        for tok in _Scanner(self.text, self.file, self.errors):
            if tok.kind not in (Kind.NEWLINE, Kind.EOF):
                line.append(tok)
                continue
            if line and line[0].kind is Kind.WORD and line[0].text in STATEMENT_WORDS:
                self.depth = 0
            definition = self._is_definition(line)
            if definition:
                self._define(line)
            else:
                for out in self._expand_line(line):
                    if out.kind is Kind.PUNCT and out.text == "{":
                        self.depth += 1
                    elif out.kind is Kind.PUNCT and out.text == "}":
                        self.depth = max(0, self.depth - 1)
                    yield out
            if not definition or tok.kind is Kind.EOF:
                yield tok  # a definition line leaves no trace, but EOF must come
            line = []

    def _is_definition(self, line: list[Token]) -> bool:
        return (
            self.depth == 0
            and len(line) >= 2
            and line[0].kind is Kind.WORD
            and line[1].kind is Kind.PUNCT
            and line[1].text == "="
        )

    def _define(self, line: list[Token]) -> None:
        name_tok = line[0]
        value = [t for t in self._expand_line(line[2:])]
        if any(t.kind is Kind.ERROR for t in value):
            return
        if not MACRO_NAME.match(name_tok.text):
            self.errors.append((name_tok.pos, f"invalid macro name {name_tok.describe()}"))
            return
        if len(value) != 1 or value[0].kind not in (Kind.WORD, Kind.STRING):
            got = value[1].describe() if len(value) > 1 else (
                value[0].describe() if value else "end of line")
            where = value[1].pos if len(value) > 1 else (value[0].pos if value else name_tok.pos)
            self.errors.append(
                (where, f'expected one value after "{name_tok.text} =", got {got}'))
            return
        if name_tok.text not in self.fixed:
            self.macros[name_tok.text] = value[0].text

    def _expand_line(self, line: list[Token]) -> Iterator[Token]:
        for tok in line:
            if tok.kind is Kind.MACRO:
                yield from self._expand(tok, tok.pos, 0, _Budget(tok.text))
            else:
                yield tok

    def _expand(self, tok: Token, at: Position, depth: int, budget: _Budget) -> Iterator[Token]:
        """Tokens of macro `tok`, placed at `at`; errors become one ERROR.

        `budget` counts every token and nested reference produced for one
        `$name` in the text, so fan-out (`b = "$a $a $a"`, ...) is bounded.
        """
        name = tok.text
        if name not in self.macros:
            hint = did_you_mean(name, self.macros)
            self.errors.append(
                (at, f"undefined macro: ${name}" + (f"; did you mean ${hint}?" if hint else "")))
            yield Token(Kind.ERROR, "", at)
            return
        if depth >= MAX_EXPANSION_DEPTH:
            self.errors.append((at, f"macro ${name} expands too deeply (a loop?)"))
            yield Token(Kind.ERROR, "", at)
            return
        raw, problems = self._scan_value(name)
        if problems:
            for message in problems:
                self.errors.append((at, message))
            yield Token(Kind.ERROR, "", at)
            return
        for kind, text in raw:
            budget.left -= 1
            if budget.left < 0:
                self.errors.append((at, f"macro ${budget.root} expands to too many tokens"))
                yield Token(Kind.ERROR, "", at)
                return
            if kind is Kind.MACRO:
                failed = False
                for inner in self._expand(Token(kind, text, at), at, depth + 1, budget):
                    failed = failed or inner.kind is Kind.ERROR
                    yield inner
                if failed:
                    return
            else:
                yield Token(kind, text, at)

    def _scan_value(self, name: str) -> tuple[list[tuple[Kind, str]], list[str]]:
        """A macro's value scanned once per definition (cached): tokens, errors."""
        value = self.macros[name]
        cached = self._cache.get((name, value))
        if cached is None:
            errors: list[tuple[Position, str]] = []
            at = Position(self.file, 0, 0)
            toks = [(t.kind, t.text) for t in _Scanner(value, self.file, errors, fixed=at,
                                                       context=f" in macro ${name}")
                    if t.kind not in (Kind.NEWLINE, Kind.EOF, Kind.ERROR)]
            cached = (toks, [message for _, message in errors])
            self._cache[(name, value)] = cached
        return cached
