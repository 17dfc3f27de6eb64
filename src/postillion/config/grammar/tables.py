"""`table NAME ...` and the table references other statements make
(docs/configuration.md, table; docs/tables.md).

A table is declared by backend and location, by absolute path, or inline
(`{ a, b }` / `{ k = v }`).  Statements name one as `<name>`, or give a
value or an inline list where an anonymous table is made; each reference
records its use, checked against the declarations once the whole file is
read (parser.py) and mapped to the service the table must answer.
"""

from __future__ import annotations

from postillion.config import values
from postillion.config.grammar.base import MATCH_WORDS, Grammar, _at, _quote
from postillion.config.lexer import Kind, Token
from postillion.config.model import Position, TableDecl
from postillion.config.stream import Stream, Syntax

# Tables OpenSMTPD 6.8 declares itself (docs/tables.md).  A user may not declare
# one of these names; a reference to one is recorded as a feature
# ("table <getpwnam>") for the runtime support check.
BUILTIN_TABLES = frozenset({"localhost", "anyhost", "localnames", "anydestination", "getpwnam"})
ANON_PREFIX = "anon:"

# Uses of a table that need a map (or a backend): key -> value lookups.
MAP_USES = frozenset({"alias", "virtual", "userbase", "listen auth", "listen auth-optional",
                      "senders", "hostnames", "relay auth", "relay domain"})
# How each use of a table (as table_ref/table_value name it) maps to the
# service (docs/tables.md, Services and value formats) the table must serve.
USE_SERVICES = {
    "alias": "alias", "virtual": "alias", "userbase": "userinfo",
    "listen auth": "credentials", "listen auth-optional": "credentials",
    "senders": "mailaddrmap", "hostnames": "addrname", "relay auth": "credentials",
    "relay domain": "relayhost", "relay host": "relayhost", "helo-src": "addrname",
    "src": "source", "source": "source", "from src": "netaddr", "from": "netaddr",
    "for domain": "domain", "from rdns": "domain", "helo": "domain", "from auth": "string",
    "auth": "string", "tag": "string", "tagged": "string", "from mail-from": "mailaddr",
    "mail-from": "mailaddr", "sender": "mailaddr", "rcpt-to": "mailaddr",
    "for rcpt-to": "mailaddr", "regex": "regex",
}


class TableGrammar(Grammar):
    """`table` statements, inline tables and `<name>` references."""

    def _table(self, s: Stream, kw: Token) -> None:
        name_tok = s.expect_value('a table name after "table"')
        name = name_tok.text
        self.st.tried_tables.add(name)
        if not name or any(ch.isspace() for ch in name):
            raise Syntax(name_tok.pos, f"invalid table name {name_tok.describe()}")
        if name.startswith(ANON_PREFIX) or name in BUILTIN_TABLES:
            raise Syntax(name_tok.pos, f"table name {_quote(name)} is reserved")
        if s.is_punct("{"):
            items, pairs, is_map = self._inline(s, f"table {name}")
            decl = TableDecl(name, "static", None, kw.pos, items, pairs, is_map)
        else:
            where = s.expect_value("BACKEND:CONFIG, an absolute path or { ... } after the name")
            config = None
            if where.kind is Kind.WORD and where.text.endswith(":") and s.peek().kind is Kind.STRING:
                config = s.next().text          # proc:"/path/helper --opt"
            backend, config = values.table_location(where, config)
            decl = TableDecl(name, backend, config, kw.pos)
        s.expect_end(f"table {name}")
        if name in self.st.tables:
            first = self.st.tables[name].pos
            raise Syntax(name_tok.pos, f"table {name} already declared at {_at(first)}")
        self.st.tables[name] = decl

    def _inline(self, s: Stream, what: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...], bool]:
        """`{ a, b }` or `{ k = v, k2 => v2 }`: commas optional, newlines allowed."""
        opening = s.expect_punct("{", f"to open {what}")
        items: list[str] = []
        pairs: list[tuple[str, str]] = []
        first: Token | None = None
        keys: dict[str, Position] = {}
        while True:
            while s.peek().kind is Kind.NEWLINE:
                s.next()
                if s.at_statement_word():
                    raise Syntax(opening.pos, f'"{{" of {what} is not closed before the next'
                                              ' statement (a keyword as a value must be quoted)')
            tok = s.peek()
            if tok.kind is Kind.PUNCT and tok.text == "}":
                s.next()
                return tuple(items), tuple(pairs), bool(pairs)
            if tok.kind is Kind.EOF:
                raise Syntax(tok.pos, f'expected "}}" to close the "{{" at {_at(opening.pos)}, '
                                      "got end of file")
            key = s.expect_value('a table element or "}"')
            is_pair = s.is_punct("=", "=>")
            if first is None:
                first = key
            elif is_pair != bool(pairs):
                raise Syntax(key.pos, f"cannot mix list elements and key-value pairs in {what} "
                                      f"(first entry at {_at(first.pos)})")
            if is_pair:
                arrow = s.next()
                value = s.expect_value(f'a value after "{key.text} {arrow.text}"')
                folded = key.text.lower()
                if folded in keys:
                    raise Syntax(key.pos, f"duplicate key {key.describe()} in {what} "
                                          f"(first at {_at(keys[folded])})")
                keys[folded] = key.pos
                pairs.append((key.text, value.text))
            else:
                items.append(key.text)
            if s.is_punct(","):
                s.next()

    def table_ref(self, s: Stream, after: str, use: str) -> str:
        """`<name>` after `after`; the name is checked once parsing is done."""
        tok = s.peek()
        if not (tok.kind is Kind.PUNCT and tok.text == "<"):
            raise Syntax(tok.pos, f'expected a table <name> after "{after}", got {tok.describe()}')
        s.next()
        name = s.expect_value('a table name after "<"')
        s.expect_punct(">", f'to close "<{name.text}"')
        self.st.table_refs.append((name.text, tok.pos, use))
        return name.text

    def table_value(self, s: Stream, after: str, keywords: frozenset[str] = MATCH_WORDS) -> str:
        """`<t>`, an inline `{ ... }` or one value: a value is an anonymous list."""
        tok = s.peek()
        if tok.kind is Kind.PUNCT and tok.text == "<":
            return self.table_ref(s, after, after)
        name = f"{ANON_PREFIX}{tok.pos.file}:{tok.pos.line}:{tok.pos.column}"
        if tok.kind is Kind.PUNCT and tok.text == "{":
            items, pairs, is_map = self._inline(s, f'the table after "{after}"')
            self.st.tables[name] = TableDecl(name, "static", None, tok.pos, items, pairs, is_map)
        else:
            value = s.expect_value(f'a value, <table> or {{ ... }} after "{after}"', keywords)
            self.st.tables[name] = TableDecl(name, "static", None, tok.pos, (value.text,))
        self.st.table_refs.append((name, tok.pos, after))
        return name
