"""smtpd.conf (modern OpenSMTPD 6.8 grammar, the skeleton's subset) -> Config.

Statements (SPEC.md §4.2, §4.3, §1.1):

    table NAME BACKEND:CONFIG | table NAME /abs/path | table NAME { ... }
    listen on ADDRESS [port N] [hostname NAME]
    action NAME maildir [PATH] [alias <t> | virtual <t>] [userbase <t>]
    match [!]from ... [!]for ... (action NAME | reject)
    hostname NAME
    smtp max-message-size SIZE | smtp limit (max-rcpt|max-mails|...) N ...
    smtp sub-addr-delim C
    include "file"

Every other statement, method or option of the full grammar is an error
that names the word and says "not supported yet": a config is never half
understood in silence.  Errors are collected for the whole file (the
statement is skipped up to its end of line) and raised together as one
`ConfigError`; references (tables, actions) are checked once everything is
read, so declaration order does not matter.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Mapping

from postillion.config import files, values
from postillion.config.errors import ConfigError, did_you_mean
from postillion.config.lexer import MACRO_NAME, Kind, Lexer, Token
from postillion.config.model import (
    ActionDecl,
    Config,
    Criterion,
    Limits,
    ListenDecl,
    MatchDecl,
    Position,
    TableDecl,
)
from postillion.config.stream import Skip, Stream, Syntax

MAX_INCLUDE_DEPTH = 16

# Tables OpenSMTPD 6.8 declares itself (SPEC.md §2).  Not built yet: a
# reference says so, and a user may not declare one of these names.
BUILTIN_TABLES = frozenset({"localhost", "anyhost", "localnames", "anydestination", "getpwnam"})
ANON_PREFIX = "anon:"

# Words of the full grammar that this parser knows but does not implement.
NOT_YET_STATEMENTS = frozenset({
    "pki", "ca", "queue", "bounce", "mta", "mda", "scheduler", "filter", "proc", "srs",
})
GRAMMAR_2012 = frozenset({"accept", "reject"})
LISTEN_NOT_YET = frozenset({
    "inet4", "inet6", "tls", "tls-require", "smtps", "pki", "ca", "auth", "auth-optional",
    "insecure-auth", "hostnames", "senders", "masquerade", "tag", "mask-src", "no-dsn",
    "received-auth", "proxy-v2", "filter",
})
METHODS_NOT_YET = frozenset({"mbox", "lmtp", "mda", "forward-only", "expand-only", "relay"})
LOCAL_NOT_YET = frozenset({"user", "wrapper", "ttl", "junk"})
RELAY_OPTIONS = frozenset({
    "host", "domain", "backup", "tls", "auth", "helo", "helo-src", "src", "mail-from",
    "pki", "ca", "rcpt-to",
})
MATCH_NOT_YET = frozenset({"auth", "helo", "mail-from", "rcpt-to", "tag", "tls", "regex"})
FROM_NOT_YET = frozenset({"socket", "rdns", "auth", "mail-from"})
FOR_NOT_YET = frozenset({"rcpt-to"})
SMTP_LIMITS = {
    "max-mails": "max_mails",
    "max-rcpt": "max_rcpt",
    "max-sessions": "max_sessions",
    "max-sessions-per-ip": "max_sessions_per_ip",
}
SMTP_NOT_YET = frozenset({"ciphers"})
LISTEN_WORDS = frozenset({"port", "hostname", *LISTEN_NOT_YET})
MATCH_WORDS = frozenset({"from", "for", "action", "reject", *MATCH_NOT_YET})
_OPTION_SHAPE = re.compile(r"[a-z][a-z0-9-]*\Z")  # a bare word that reads as a keyword


def _quote(word: str) -> str:
    return f'"{word}"'


def _hint(word: str, candidates: Iterable[str]) -> str:
    close = did_you_mean(word, candidates)
    return f"; did you mean {_quote(close)}?" if close else ""


def _at(pos: Position) -> str:
    """Where something was first, as `file:line:column` (it may be an include)."""
    return str(pos)


@dataclass
class _State:
    """Everything one parse gathers across a file and its includes."""

    errors: list[tuple[Position, str]] = field(default_factory=list)
    macros: dict[str, str] = field(default_factory=dict)
    fixed_macros: frozenset[str] = frozenset()
    # Reading order of each file: the include positions that lead to it,
    # so errors sort as a reader meets them (an include's errors in place).
    order: dict[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    including: list[tuple[str, str]] = field(default_factory=list)  # (realpath, as written)
    tables: dict[str, TableDecl] = field(default_factory=dict)
    listeners: list[ListenDecl] = field(default_factory=list)
    actions: dict[str, ActionDecl] = field(default_factory=dict)
    matches: list[MatchDecl] = field(default_factory=list)
    hostname: tuple[str, Position] | None = None
    limits: dict[str, tuple[object, Position]] = field(default_factory=dict)
    # Names whose declaration was attempted but broken: no "no such" noise.
    tried_tables: set[str] = field(default_factory=set)
    tried_actions: set[str] = field(default_factory=set)
    table_refs: list[tuple[str, Position, str]] = field(default_factory=list)  # name, at, use
    action_refs: list[tuple[str, Position]] = field(default_factory=list)


class Parser:
    """One parse of a top-level file: feed it text, ask for the Config."""

    def __init__(self, defines: Mapping[str, str] | None = None) -> None:
        self.st = _State()
        for name, value in (defines or {}).items():
            if not MACRO_NAME.match(name):
                self.st.errors.append(
                    (Position("<command line>", 1, 1), f"invalid macro name {_quote(name)}"))
            else:
                self.st.macros[name] = value
        self.st.fixed_macros = frozenset(self.st.macros)
        self._statements: dict[str, Callable[[Stream, Token], None]] = {
            "table": self._table,
            "listen": self._listen,
            "action": self._action,
            "match": self._match,
            "hostname": self._hostname,
            "smtp": self._smtp,
            "include": self._include,
        }

    # -- files ---------------------------------------------------------------

    def parse_text(self, text: str, file: str) -> None:
        self.st.order.setdefault(file, ())
        self.st.including.append((os.path.realpath(file), file))
        try:
            self._file(text, file)
        finally:
            self.st.including.pop()

    def parse_path(self, file: str, at: Position | None) -> None:
        """Read and parse `file`; `at` is the include statement, None at top."""
        where = at or Position(file, 1, 1)
        real = os.path.realpath(file)
        if any(real == seen for seen, _ in self.st.including):
            chain = " -> ".join([*(shown for _, shown in self.st.including), file])
            self.st.errors.append((where, f"include cycle: {chain}"))
            return
        if len(self.st.including) >= MAX_INCLUDE_DEPTH:
            self.st.errors.append((where, f"includes nested deeper than {MAX_INCLUDE_DEPTH}"))
            return
        text = files.read_text(file, where, self.st.errors)
        if text is not None:
            if at is not None:
                self.st.order.setdefault(file, (*self.st.order.get(at.file, ()), (at.line, at.column)))
            self.parse_text(text, file)

    def _file(self, text: str, file: str) -> None:
        lexer = Lexer(text, file, self.st.macros, self.st.errors, self.st.fixed_macros)
        s = Stream(iter(lexer))
        while True:
            tok = s.raw_peek()
            if tok.kind is Kind.EOF:
                return
            if tok.kind is Kind.NEWLINE:
                s.raw_next()
                continue
            s.start_statement()
            try:
                self._statement(s)
            except Syntax as e:
                self.st.errors.append((e.pos, e.message))
                s.recover()
            except Skip:
                s.recover()

    def _statement(self, s: Stream) -> None:
        tok = s.peek()
        if tok.kind is not Kind.WORD:
            raise Syntax(tok.pos, f"expected a statement (table, listen, action, match, ...), "
                                  f"got {tok.describe()}")
        handler = self._statements.get(tok.text)
        if handler is not None:
            s.next()
            handler(s, tok)
            return
        if tok.text in NOT_YET_STATEMENTS:
            raise Syntax(tok.pos, f"{_quote(tok.text)} is not supported yet")
        if tok.text in GRAMMAR_2012:
            raise Syntax(tok.pos, f"{_quote(tok.text)} rules (2012 grammar) are not supported yet;"
                                  " use match")
        known = [*self._statements, *NOT_YET_STATEMENTS]
        raise Syntax(tok.pos, f"unknown statement {tok.describe()}{_hint(tok.text, known)}")

    # -- table -----------------------------------------------------------------

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

    def _table_ref(self, s: Stream, after: str, use: str) -> str:
        """`<name>` after `after`; the name is checked once parsing is done."""
        tok = s.peek()
        if not (tok.kind is Kind.PUNCT and tok.text == "<"):
            raise Syntax(tok.pos, f'expected a table <name> after "{after}", got {tok.describe()}')
        s.next()
        name = s.expect_value('a table name after "<"')
        s.expect_punct(">", f'to close "<{name.text}"')
        self.st.table_refs.append((name.text, tok.pos, use))
        return name.text

    def _table_value(self, s: Stream, after: str) -> str:
        """`<t>`, an inline `{ ... }` or one value: a value is an anonymous list."""
        tok = s.peek()
        if tok.kind is Kind.PUNCT and tok.text == "<":
            return self._table_ref(s, after, after)
        if tok.kind is Kind.WORD and tok.text == "regex":
            raise Syntax(tok.pos, f'"{after} regex" is not supported yet')
        name = f"{ANON_PREFIX}{tok.pos.file}:{tok.pos.line}:{tok.pos.column}"
        if tok.kind is Kind.PUNCT and tok.text == "{":
            items, pairs, is_map = self._inline(s, f'the table after "{after}"')
            self.st.tables[name] = TableDecl(name, "static", None, tok.pos, items, pairs, is_map)
            return name
        value = s.expect_value(f'a value, <table> or {{ ... }} after "{after}"', MATCH_WORDS)
        self.st.tables[name] = TableDecl(name, "static", None, tok.pos, (value.text,))
        return name

    # -- listen ----------------------------------------------------------------

    def _listen(self, s: Stream, kw: Token) -> None:
        s.expect_word("on", "listen")
        address = s.expect_value('an address or interface after "listen on"', LISTEN_WORDS)
        port, hostname = None, None
        seen: dict[str, Position] = {}
        while not s.at_end():
            opt = self._option(s, seen, "listen option")
            if opt.text == "port":
                port = values.number(s.expect_value('a port after "port"'), "port", 1, 65535)
            elif opt.text == "hostname":
                hostname = self._host_name(
                    s.expect_value('a host name after "hostname"', LISTEN_WORDS))
            elif opt.text in LISTEN_NOT_YET:
                raise Syntax(opt.pos, f"listen option {_quote(opt.text)} is not supported yet")
            else:
                known = ["port", "hostname", *LISTEN_NOT_YET]
                raise Syntax(opt.pos, f"unknown listen option {opt.describe()}"
                                      f"{_hint(opt.text, known)}")
        s.expect_end("listen on")
        self.st.listeners.append(ListenDecl(address.text, kw.pos, port, hostname))

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

    # -- action ----------------------------------------------------------------

    def _action(self, s: Stream, kw: Token) -> None:
        name_tok = s.expect_value('an action name after "action"')
        name = name_tok.text
        self.st.tried_actions.add(name)
        method = s.peek()
        if method.kind is not Kind.WORD:
            raise Syntax(method.pos, f"expected a delivery method after action {_quote(name)}, "
                                     f"got {method.describe()}")
        s.next()
        if method.text in METHODS_NOT_YET:
            raise Syntax(method.pos, f"action method {_quote(method.text)} is not supported yet")
        if method.text != "maildir":
            known = ["maildir", *METHODS_NOT_YET]
            raise Syntax(method.pos, f"unknown action method {method.describe()}"
                                     f"{_hint(method.text, known)}")
        path = None
        tok = s.peek()
        if tok.kind is Kind.STRING or (tok.kind is Kind.WORD and not _OPTION_SHAPE.match(tok.text)):
            s.next()
            if not tok.text:
                raise Syntax(tok.pos, 'expected a maildir path, got ""')
            path = tok.text
        tables: dict[str, str] = {}
        seen: dict[str, Position] = {}
        while not s.at_end():
            opt = self._option(s, seen, "maildir option")
            if opt.text in ("alias", "virtual", "userbase"):
                other = {"alias": "virtual", "virtual": "alias"}.get(opt.text)
                if other in seen:
                    raise Syntax(opt.pos, f'"{opt.text}" cannot be used with "{other}"')
                tables[opt.text] = self._table_ref(s, opt.text, opt.text)
            elif opt.text in LOCAL_NOT_YET:
                raise Syntax(opt.pos, f"action option {_quote(opt.text)} is not supported yet")
            elif opt.text in RELAY_OPTIONS:
                raise Syntax(opt.pos, f"{_quote(opt.text)} is a relay option, not valid with maildir")
            else:
                known = ["alias", "virtual", "userbase", *LOCAL_NOT_YET]
                raise Syntax(opt.pos, f"unknown action option {opt.describe()}"
                                      f"{_hint(opt.text, known)}")
        s.expect_end(f"action {_quote(name)}")
        if name in self.st.actions:
            first = self.st.actions[name].pos
            raise Syntax(name_tok.pos, f"action {_quote(name)} already declared at {_at(first)}")
        self.st.actions[name] = ActionDecl(
            name, "maildir", kw.pos, path,
            alias=tables.get("alias"), virtual=tables.get("virtual"),
            userbase=tables.get("userbase"),
        )

    # -- match -----------------------------------------------------------------

    def _match(self, s: Stream, kw: Token) -> None:
        criteria: dict[str, Criterion] = {}
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
                if not (tok.kind is Kind.WORD and tok.text in ("from", "for", *MATCH_NOT_YET)):
                    raise Syntax(tok.pos, f'expected "from" or "for" after "!", got {tok.describe()}')
            if tok.kind is Kind.WORD and tok.text in ("from", "for"):
                s.next()
                if tok.text in firsts:
                    raise Syntax(tok.pos, f"{_quote(tok.text)} given twice in one match "
                                          f"(first at {_at(firsts[tok.text])})")
                firsts[tok.text] = tok.pos
                criteria[tok.text] = self._criterion(s, tok, negation)
            elif tok.kind is Kind.WORD and tok.text in MATCH_NOT_YET:
                raise Syntax(tok.pos, f"match option {_quote(tok.text)} is not supported yet")
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
                known = ["from", "for", "action", "reject", *MATCH_NOT_YET]
                hint = _hint(tok.text, known) if tok.kind is Kind.WORD else ""
                raise Syntax(tok.pos, 'expected "from", "for", "action" or "reject" in match, '
                                      f"got {tok.describe()}{hint}")
        ordered = (
            criteria.get("from") or Criterion("from-local", kw.pos),
            criteria.get("for") or Criterion("for-local", kw.pos),
        )
        self.st.matches.append(MatchDecl(ordered, kw.pos, action))

    def _criterion(self, s: Stream, kw: Token, negation: Token | None) -> Criterion:
        """What follows `from` or `for`: local, any, src X / domain X."""
        pos = (negation or kw).pos
        negate = negation is not None
        keyed, not_yet = ("src", FROM_NOT_YET) if kw.text == "from" else ("domain", FOR_NOT_YET)
        what = s.peek()
        if what.kind is Kind.WORD and what.text in ("local", "any"):
            s.next()
            return Criterion(f"{kw.text}-{what.text}", pos, negate)
        if what.kind is Kind.WORD and what.text == keyed:
            s.next()
            table = self._table_value(s, f"{kw.text} {keyed}")
            return Criterion(f"{kw.text}-{keyed}", pos, negate, table)
        if what.kind is Kind.WORD and what.text in not_yet:
            raise Syntax(what.pos, f'"{kw.text} {what.text}" is not supported yet')
        hint = _hint(what.text, ["local", "any", keyed, *not_yet]) if what.kind is Kind.WORD else ""
        raise Syntax(what.pos, f'expected local, any or {keyed} after "{kw.text}", '
                               f"got {what.describe()}{hint}")

    # -- globals ---------------------------------------------------------------

    def _hostname(self, s: Stream, kw: Token) -> None:
        name = self._host_name(s.expect_value('a host name after "hostname"'))
        s.expect_end("hostname")
        if self.st.hostname is not None:
            raise Syntax(kw.pos, f"hostname already set at {_at(self.st.hostname[1])}")
        self.st.hostname = (name, kw.pos)

    def _smtp(self, s: Stream, kw: Token) -> None:
        opt = s.peek()
        if opt.kind is not Kind.WORD:
            raise Syntax(opt.pos, f'expected an option after "smtp", got {opt.describe()}')
        s.next()
        if opt.text == "max-message-size":
            tok = s.expect_value('a size after "max-message-size"')
            self._set_limit("max_message_size", values.size(tok, "max-message-size"), opt)
        elif opt.text == "sub-addr-delim":
            tok = s.expect_value('a character after "sub-addr-delim"')
            if len(tok.text) != 1 or tok.text.isalnum() or tok.text.isspace():
                raise Syntax(tok.pos, f"expected one punctuation character, got {tok.describe()}")
            self._set_limit("sub_addr_delim", tok.text, opt)
        elif opt.text == "limit":
            if s.at_end():
                tok = s.peek()
                raise Syntax(tok.pos, f'expected a limit after "smtp limit", got {tok.describe()}')
            while not s.at_end():
                which = s.expect_value("a limit name")
                if which.kind is not Kind.WORD or which.text not in SMTP_LIMITS:
                    raise Syntax(which.pos, f"unknown smtp limit {which.describe()}"
                                            f"{_hint(which.text, SMTP_LIMITS)}")
                tok = s.expect_value(f'a number after "{which.text}"')
                self._set_limit(SMTP_LIMITS[which.text], values.number(tok, which.text), which)
        elif opt.text in SMTP_NOT_YET:
            raise Syntax(opt.pos, f"smtp option {_quote(opt.text)} is not supported yet")
        else:
            known = ["max-message-size", "sub-addr-delim", "limit", *SMTP_NOT_YET]
            raise Syntax(opt.pos, f"unknown smtp option {opt.describe()}{_hint(opt.text, known)}")
        s.expect_end(f"smtp {opt.text}")

    def _set_limit(self, field_name: str, value: object, at: Token) -> None:
        if field_name in self.st.limits:
            first = self.st.limits[field_name][1]
            raise Syntax(at.pos, f"{_quote(at.text)} already set at {_at(first)}")
        self.st.limits[field_name] = (value, at.pos)

    def _include(self, s: Stream, kw: Token) -> None:
        name = s.expect_value('a file name after "include"')
        s.expect_end("include")
        if not name.text:
            raise Syntax(name.pos, 'expected a file name after "include", got ""')
        path = name.text
        if not os.path.isabs(path):
            path = os.path.normpath(os.path.join(os.path.dirname(kw.pos.file), path))
        self.parse_path(path, name.pos)

    # -- the end -----------------------------------------------------------------

    def config(self, path: str) -> Config:
        """Check references, then build the Config or raise every error."""
        self._check_references()
        if self.st.errors:
            raise ConfigError(self._sorted_errors())
        hostname = self.st.hostname[0] if self.st.hostname else files.default_hostname()
        limits = replace(Limits(), **{k: v for k, (v, _) in self.st.limits.items()})
        return Config(
            path=path,
            hostname=hostname,
            tables=dict(self.st.tables),
            listeners=tuple(self.st.listeners),
            actions=dict(self.st.actions),
            matches=tuple(self.st.matches),
            limits=limits,
        )

    def _check_references(self) -> None:
        st = self.st
        for name, at, use in st.table_refs:
            decl = st.tables.get(name)
            if decl is None:
                if name in st.tried_tables:
                    continue
                if name in BUILTIN_TABLES:
                    st.errors.append((at, f"built-in table <{name}> is not supported yet"))
                    continue
                declared = [n for n in st.tables if not n.startswith(ANON_PREFIX)]
                close = did_you_mean(name, declared)
                hint = f"; did you mean {close}?" if close else ""
                st.errors.append((at, f"no such table: {name}{hint}"))
            elif use in ("alias", "virtual", "userbase") and decl.config is None \
                    and decl.backend == "static" and not decl.is_map:
                st.errors.append((at, f'table {name} is a list; "{use}" needs a map '
                                      f"or a backend (declared at {_at(decl.pos)})"))
        for name, at in st.action_refs:
            if name not in st.actions and name not in st.tried_actions:
                close = did_you_mean(name, st.actions)
                hint = f'; did you mean "{close}"?' if close else ""
                st.errors.append((at, f"no such action: {_quote(name)}{hint}"))

    def _sorted_errors(self) -> list[tuple[Position, str]]:
        """Unique errors in reading order, an included file's where it is included."""
        unique = list(dict.fromkeys(self.st.errors))
        order = self.st.order
        return sorted(unique, key=lambda e: (*order.get(e[0].file, ((0, 0),)), (e[0].line, e[0].column)))
