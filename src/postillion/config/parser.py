"""smtpd.conf -> Config: the modern OpenSMTPD 6.8 grammar, whole (docs/configuration.md).

Statements (docs/configuration.md):

    table NAME BACKEND:CONFIG | table NAME /abs/path | table NAME { ... }
    pki NAME cert FILE | pki NAME key FILE | pki NAME dhe none|legacy|auto
    ca NAME cert FILE
    listen on IF [OPTION ...]
    action NAME METHOD [OPTION ...]
    match [[!]OPTION ...] (action NAME | reject)
    hostname NAME
    smtp max-message-size S | limit ... | sub-addr-delim C | ciphers S | workers N|auto
    queue ttl D | queue compression | queue min-free S | queue user NAME
    bounce warn-interval D[,D...]
    mta max-deferred N | mta limit [for domain D] KEY N ...
    mda limit max-session N ... | mda wrapper NAME "CMD"
    scheduler limit max-inflight N
    include "file"

The 2012 `accept`/`reject` rules are compiled by `legacy.py` into the same
model; their global spellings (`expire`, `max-message-size`, `bounce-warn`)
and listen options (`certificate`, `ssl`) are accepted in either grammar
(docs/configuration.md, The 2012 grammar), only the two kinds of *rules* may not be mixed.

Everything the grammar knows is parsed into the model, and each option is
recorded as a `Feature` so the daemon can refuse what the runtime does not
implement yet (support.py).  What is not supported yet (`filter`,
`proc`, `srs`, `admd`, `queue encryption`, `proxy-v2`, `listen on socket`)
is an error saying "not supported yet": never half understood in silence.

Errors are collected for the whole file (the statement is skipped up to its
end of line) and raised together as one `ConfigError`; references (tables,
actions, pki, ca, mda wrappers) are checked once everything is read, so
declaration order does not matter.

Choices of our own (each one is also a case of `make
conformance`, which lists where OpenSMTPD 6.8's checker disagrees):

- Refused here rather than at delivery: unknown `%{...}` specifiers, `mda`
  commands with shell syntax, `lmtp` targets that are neither HOST:PORT nor
  /socket, relay URLs with an unknown scheme, bad host or port, a `pki`
  without cert or key, a delay without unit (`4` instead of `4d`, as 6.8),
  limits below 1, more than 4 warn intervals.
- Accepted: several `pki` on one listener (SNI, as OpenSMTPD 7.x), a map
  where 6.8 wants a list (`for domain <map>`: the key exists), a config
  without rules (every recipient refused; tables-only configs serve
  `postillion table lookup`), a bare punctuation `sub-addr-delim`.
- Relative `pki`/`ca` files resolve against the declaring file, as tables.
- `queue min-free S` is ours, not OpenSMTPD's (Postfix's `queue_minfree`):
  the spool space MAIL requires, so 6.8's checker refuses it.
- `smtp workers N|auto` and `queue user NAME` are ours too (OpenSMTPD's
  process layout and its `_smtpd`/`_smtpq` users are fixed at build time):
  how many smtp processes serve the listeners, and the unprivileged user
  the smtp and queue processes run as.  `queue user root` is refused here;
  a name whose uid is 0 is the daemon's to refuse, at start.
- 2012 `certificate NAME` declares pki NAME (/etc/mail/certs/NAME.crt and
  .key) unless a `pki NAME` exists; `ssl` is two listeners (465 SMTPS, 25
  STARTTLS).  See legacy.py for how rules compile.
"""

from __future__ import annotations

import ipaddress

import os
import re
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Mapping

from postillion.config import files, values
from postillion.config.errors import ConfigError, did_you_mean
from postillion.config.lexer import MACRO_NAME, Kind, Lexer, Token
from postillion.config.model import (
    LOCAL_METHODS,
    MAX_SMTP_WORKERS,
    METHODS,
    ActionDecl,
    BounceOptions,
    CaDecl,
    Config,
    Criterion,
    Feature,
    Limits,
    ListenDecl,
    MatchDecl,
    MdaOptions,
    MetricsDecl,
    MtaLimit,
    MtaOptions,
    PkiDecl,
    Position,
    ProcessOptions,
    QueueOptions,
    RelayHost,
    SchedulerOptions,
    TableDecl,
    TableUse,
)
from postillion.config.relay import host_name, parse_url
from postillion.config.stream import Skip, Stream, Syntax

MAX_INCLUDE_DEPTH = 16

# Tables OpenSMTPD 6.8 declares itself (docs/tables.md).  A user may not declare
# one of these names; a reference to one is recorded as a feature
# ("table <getpwnam>") for the runtime support check.
BUILTIN_TABLES = frozenset({"localhost", "anyhost", "localnames", "anydestination", "getpwnam"})
ANON_PREFIX = "anon:"

# Not supported yet (docs/configuration.md): refused at parse time, whatever the runtime does.
OUT_OF_SCOPE_STATEMENTS = frozenset({"filter", "proc", "srs", "admd", "dkim"})
GRAMMAR_2012 = frozenset({"accept", "reject"})

LISTEN_OPTIONS = (
    "inet4", "inet6", "port", "tls", "tls-require", "smtps", "pki", "ca", "auth",
    "auth-optional", "insecure-auth", "hostname", "hostnames", "senders", "tag", "mask-src",
    "no-dsn", "received-auth",
)
LISTEN_2012 = ("ssl", "certificate")
LISTEN_OUT_OF_SCOPE = frozenset({"proxy-v2", "filter"})
LISTEN_WORDS = frozenset({*LISTEN_OPTIONS, *LISTEN_2012, *LISTEN_OUT_OF_SCOPE, "verify",
                          "masquerade"})
TLS_MODES = ("tls", "tls-require", "smtps", "ssl")

LOCAL_OPTIONS = ("alias", "virtual", "userbase", "user", "wrapper")
RELAY_OPTIONS = ("host", "domain", "backup", "tls", "auth", "helo", "helo-src", "src",
                 "mail-from", "pki", "ca")
ACTION_WORDS = frozenset({*LOCAL_OPTIONS, *RELAY_OPTIONS, "ttl", "junk", "rcpt-to"})

MATCH_OPTIONS = ("from", "for", "auth", "helo", "mail-from", "rcpt-to", "tag", "tls")
MATCH_WORDS = frozenset({*MATCH_OPTIONS, "action", "reject", "regex"})
FROM_KINDS = ("any", "local", "socket", "src", "rdns", "auth", "mail-from")
FOR_KINDS = ("any", "local", "domain", "rcpt-to")
# Kinds whose value is required / optional (the rest take none).
VALUE_REQUIRED = frozenset({"from-src", "from-mail-from", "for-domain", "for-rcpt-to",
                            "helo", "mail-from", "rcpt-to", "tag"})
VALUE_OPTIONAL = frozenset({"from-rdns", "from-auth", "auth"})

SMTP_LIMITS = {
    "max-mails": "max_mails",
    "max-rcpt": "max_rcpt",
    "max-sessions": "max_sessions",
    "max-sessions-per-ip": "max_sessions_per_ip",
}
MTA_LIMITS = (  # docs/configuration.md, Global options; delays are seconds
    "max-conn-per-host", "max-conn-per-route", "max-conn-per-source", "max-conn-per-connector",
    "max-conn-per-relay", "max-conn-per-domain", "conn-delay-host", "conn-delay-route",
    "conn-delay-source", "conn-delay-connector", "conn-delay-relay", "conn-delay-domain",
    "reconn-delay-host", "reconn-delay-route", "reconn-delay-source", "reconn-delay-connector",
    "reconn-delay-relay", "reconn-delay-domain", "session-mail-max", "max-failures-per-session",
    "max-mx-tried",
)
MTA_FAMILIES = ("inet4", "inet6")
MDA_LIMITS = {"max-session": "max_session", "max-session-per-user": "max_session_per_user"}
MAX_WARN_INTERVALS = 4

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
_OPTION_SHAPE = re.compile(r"[a-z][a-z0-9-]*\Z")  # a bare word that reads as a keyword
_MAILADDR = re.compile(r"[^\s@<>]*@?[^\s@<>]*\Z")
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*/=?^_`{|}~+.-]{1,64}\Z")
# A system user name as shadow's useradd accepts it by default (a trailing
# `$` is for Samba's machine accounts); 32 characters is its limit.
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]*\$?\Z")
MAX_USER_NAME = 32


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
    pkis: dict[str, PkiDecl] = field(default_factory=dict)
    pki_fields: dict[tuple[str, str], Position] = field(default_factory=dict)
    cas: dict[str, CaDecl] = field(default_factory=dict)
    implied_pkis: dict[str, PkiDecl] = field(default_factory=dict)  # 2012 `certificate N`
    hostname: tuple[str, Position] | None = None
    limits: dict[str, tuple[object, Position]] = field(default_factory=dict)
    # `queue`, `bounce`, `mta`, `mda`, `scheduler`, `processes`: (section, field) -> value
    options: dict[tuple[str, str], tuple[object, Position]] = field(default_factory=dict)
    mta_limits: list[MtaLimit] = field(default_factory=list)
    mta_nameservers: list[tuple[str, int]] = field(default_factory=list)
    mda_wrappers: dict[str, tuple[str, Position]] = field(default_factory=dict)
    features: list[Feature] = field(default_factory=list)
    # The first rule of each grammar: "match" / "2012".
    rule_grammar: dict[str, Position] = field(default_factory=dict)
    # Names whose declaration was attempted but broken: no "no such" noise.
    tried_tables: set[str] = field(default_factory=set)
    tried_actions: set[str] = field(default_factory=set)
    tried_pkis: set[str] = field(default_factory=set)
    table_refs: list[tuple[str, Position, str]] = field(default_factory=list)  # name, at, use
    action_refs: list[tuple[str, Position]] = field(default_factory=list)
    pki_refs: list[tuple[str, Position]] = field(default_factory=list)
    ca_refs: list[tuple[str, Position]] = field(default_factory=list)
    wrapper_refs: list[tuple[str, Position]] = field(default_factory=list)
    metrics: MetricsDecl | None = None      # `metrics listen on`, at most one


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
        from postillion.config import legacy

        self._statements: dict[str, Callable[[Stream, Token], None]] = {
            "table": self._table,
            "pki": self._pki,
            "ca": self._ca,
            "listen": self._listen,
            "action": self._action,
            "match": self._match,
            "hostname": self._hostname,
            "smtp": self._smtp,
            "queue": self._queue,
            "bounce": self._bounce,
            "mta": self._mta,
            "mda": self._mda,
            "scheduler": self._scheduler,
            "metrics": self._metrics,
            "include": self._include,
            "accept": lambda s, kw: legacy.rule(self, s, kw),
            "reject": lambda s, kw: legacy.rule(self, s, kw),
            # 2012 spellings of global options, accepted in either grammar.
            "expire": self._expire,
            "max-message-size": self._max_message_size,
            "bounce-warn": self._bounce_warn,
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
        if tok.text in OUT_OF_SCOPE_STATEMENTS:
            raise Syntax(tok.pos, f"{_quote(tok.text)} is not supported yet")
        known = [*self._statements, *OUT_OF_SCOPE_STATEMENTS]
        raise Syntax(tok.pos, f"unknown statement {tok.describe()}{_hint(tok.text, known)}")

    def use(self, name: str, pos: Position) -> None:
        """Record that the config uses option `name` (for support.unsupported)."""
        self.st.features.append(Feature(name, pos))

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

    # -- pki, ca -----------------------------------------------------------------

    def _pki(self, s: Stream, kw: Token) -> None:
        name_tok = s.expect_value('a pki name after "pki"')
        name = name_tok.text
        self.st.tried_pkis.add(name)
        what = s.peek()
        if not s.is_word("cert", "key", "dhe"):
            hint = _hint(what.text, ["cert", "key", "dhe"]) if what.kind is Kind.WORD else ""
            raise Syntax(what.pos, f'expected "cert", "key" or "dhe" after "pki {name}", '
                                   f"got {what.describe()}{hint}")
        s.next()
        if what.text == "dhe":
            tok = s.expect_value('"none", "legacy" or "auto" after "dhe"')
            if tok.text not in ("none", "legacy", "auto"):
                raise Syntax(tok.pos, f'expected "none", "legacy" or "auto" after "dhe", '
                                      f"got {tok.describe()}")
            value = tok.text
        else:
            tok = s.expect_value(f'a file after "pki {name} {what.text}"')
            if not tok.text:
                raise Syntax(tok.pos, f'expected a file after "{what.text}", got ""')
            value = values.resolve(tok.text, tok.pos.file)
        s.expect_end(f"pki {name} {what.text}")
        first = self.st.pki_fields.get((name, what.text))
        if first is not None:
            raise Syntax(what.pos, f"pki {name} {what.text} already set at {_at(first)}")
        self.st.pki_fields[(name, what.text)] = what.pos
        decl = self.st.pkis.get(name) or PkiDecl(name, kw.pos)
        self.st.pkis[name] = replace(decl, **{what.text: value})
        self.use("pki", kw.pos)

    def _ca(self, s: Stream, kw: Token) -> None:
        name_tok = s.expect_value('a ca name after "ca"')
        s.expect_word("cert", f"ca {name_tok.text}")
        tok = s.expect_value(f'a file after "ca {name_tok.text} cert"')
        if not tok.text:
            raise Syntax(tok.pos, 'expected a file after "cert", got ""')
        s.expect_end(f"ca {name_tok.text} cert")
        if name_tok.text in self.st.cas:
            first = self.st.cas[name_tok.text].pos
            raise Syntax(name_tok.pos, f"ca {name_tok.text} already declared at {_at(first)}")
        self.st.cas[name_tok.text] = CaDecl(name_tok.text, kw.pos,
                                            values.resolve(tok.text, tok.pos.file))
        self.use("ca", kw.pos)

    def implied_pki(self, name: str, pos: Position) -> None:
        """2012 `certificate NAME`: /etc/mail/certs/NAME.crt and .key, unless declared."""
        self.st.implied_pkis.setdefault(name, PkiDecl(
            name, pos, cert=f"/etc/mail/certs/{name}.crt", key=f"/etc/mail/certs/{name}.key"))

    # -- listen ----------------------------------------------------------------

    def _listen(self, s: Stream, kw: Token) -> None:
        s.expect_word("on", "listen")
        address = s.expect_value('an address or interface after "listen on"', LISTEN_WORDS)
        if address.kind is Kind.WORD and address.text == "socket":
            raise Syntax(address.pos, '"listen on socket" is not supported yet')
        self.use("listen on", kw.pos)
        f: dict[str, object] = {}
        pkis: list[str] = []
        seen: dict[str, Position] = {}
        while not s.at_end():
            opt = s.peek()
            if opt.kind is Kind.WORD and opt.text in ("pki", "certificate"):
                s.next()            # several pki are allowed (SNI)
                seen.setdefault("pki", opt.pos)
            else:
                opt = self._option(s, seen, "listen option")
            t = opt.text
            if t in LISTEN_OPTIONS:
                self.use(f"listen {t}", opt.pos)
            if t == "port":
                f["port"] = values.number(s.expect_value('a port after "port"'), "port", 1, 65535)
            elif t in ("inet4", "inet6"):
                other = "inet6" if t == "inet4" else "inet4"
                if other in seen and seen[other] != opt.pos:
                    raise Syntax(opt.pos, f'"{t}" cannot be used with "{other}" (leave both out'
                                          " for both families)")
                f["family"] = t
            elif t in TLS_MODES:
                for other in TLS_MODES:
                    if other != t and other in seen:
                        raise Syntax(opt.pos, f"{_quote(t)} cannot be used with {_quote(other)}")
                if t == "ssl":
                    self.use("listen smtps", opt.pos)
                    self.use("listen tls", opt.pos)
                    f["ssl"] = opt.pos
                    continue
                f["tls"] = t in ("tls", "tls-require")
                f["tls_require"] = t == "tls-require"
                f["smtps"] = t == "smtps"
                if t != "tls" and s.is_word("verify"):
                    self.use("listen verify", s.next().pos)
                    f["verify"] = True
            elif t in ("pki", "certificate"):
                name = s.expect_value(f'a pki name after "{t}"', LISTEN_WORDS)
                if t == "certificate":
                    self.use("listen pki", opt.pos)
                    self.implied_pki(name.text, name.pos)
                self.st.pki_refs.append((name.text, name.pos))
                if name.text not in pkis:
                    pkis.append(name.text)
            elif t == "ca":
                name = s.expect_value('a ca name after "ca"', LISTEN_WORDS)
                self.st.ca_refs.append((name.text, name.pos))
                f["ca"] = name.text
            elif t in ("auth", "auth-optional"):
                other = "auth-optional" if t == "auth" else "auth"
                if other in seen:
                    raise Syntax(opt.pos, f'"{t}" cannot be used with "{other}"')
                f["auth"] = "required" if t == "auth" else "optional"
                if s.is_punct("<"):
                    f["auth_table"] = self.table_ref(s, t, f"listen {t}")
            elif t == "insecure-auth":
                f["insecure_auth"] = True
            elif t == "hostname":
                f["hostname"] = self._host_name(
                    s.expect_value('a host name after "hostname"', LISTEN_WORDS))
            elif t == "hostnames":
                f["hostnames"] = self.table_ref(s, t, t)
            elif t == "senders":
                f["senders"] = self.table_ref(s, t, t)
                if s.is_word("masquerade"):
                    self.use("listen masquerade", s.next().pos)
                    f["masquerade"] = True
            elif t == "tag":
                f["tag"] = s.expect_value('a tag after "tag"', LISTEN_WORDS).text
            elif t in ("mask-src", "no-dsn", "received-auth"):
                f[t.replace("-", "_")] = True
            elif t in LISTEN_OUT_OF_SCOPE:
                raise Syntax(opt.pos, f"listen option {_quote(t)} is not supported yet")
            elif t in ("verify", "masquerade"):
                after = "senders <t>" if t == "masquerade" else '"tls-require" or "smtps"'
                raise Syntax(opt.pos, f'"{t}" must follow {after}')
            else:
                known = [*LISTEN_OPTIONS, *LISTEN_2012]
                raise Syntax(opt.pos, f"unknown listen option {opt.describe()}"
                                      f"{_hint(t, known)}")
        s.expect_end("listen on")
        secure = any(f.get(k) for k in ("tls", "smtps")) or "ssl" in f
        if f.get("auth") and not secure and not f.get("insecure_auth"):
            where = seen.get("auth") or seen["auth-optional"]
            raise Syntax(where, '"auth" needs "tls", "tls-require" or "smtps" on the listener'
                                ' (or "insecure-auth" for loopback tests)')
        if pkis and not secure:
            raise Syntax(seen["pki"], '"pki" needs "tls", "tls-require" or "smtps" on the listener')
        if f.get("insecure_auth") and not f.get("auth"):
            raise Syntax(seen["insecure-auth"], '"insecure-auth" needs "auth" or "auth-optional"')
        ssl = f.pop("ssl", None)
        if ssl is not None and "port" in f:
            raise Syntax(seen["port"], '"port" cannot be used with "ssl" (it listens on 465'
                                       ' with TLS and on 25 with STARTTLS)')
        base = ListenDecl(address.text, kw.pos, pki=tuple(pkis), **f)  # type: ignore[arg-type]
        if ssl is not None:   # 2012: SMTPS on 465 and STARTTLS on 25
            self.st.listeners.append(replace(base, port=465, smtps=True))
            self.st.listeners.append(replace(base, port=25, tls=True))
        else:
            self.st.listeners.append(base)

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
        if method.text not in METHODS:
            raise Syntax(method.pos, f"unknown action method {method.describe()}"
                                     f"{_hint(method.text, METHODS)}")
        self.use(f"action {method.text}", method.pos)
        f: dict[str, object] = {}
        m = method.text
        tok = s.peek()
        if m == "maildir" and (tok.kind is Kind.STRING or (
                tok.kind is Kind.WORD and not _OPTION_SHAPE.match(tok.text))):
            s.next()
            if not tok.text:
                raise Syntax(tok.pos, 'expected a maildir path, got ""')
            f["path"] = values.format_string(tok, "maildir path")
        elif m == "mda":
            tok = s.expect_value('a command after "mda"', ACTION_WORDS)
            f["command"] = values.command(tok, "mda command")
        elif m == "lmtp":
            tok = s.expect_value('HOST:PORT or /socket after "lmtp"', ACTION_WORDS)
            f["destination"] = self._lmtp_destination(tok)
        seen: dict[str, Position] = {}
        while not s.at_end():
            opt = self._option(s, seen, f"{m} option")
            self.option(s, opt, m, f, seen)
        s.expect_end(f"action {_quote(name)}")
        self.check_action(m, f, seen)
        if name in self.st.actions:
            first = self.st.actions[name].pos
            raise Syntax(name_tok.pos, f"action {_quote(name)} already declared at {_at(first)}")
        self.st.actions[name] = ActionDecl(name, m, kw.pos, **f)  # type: ignore[arg-type]

    def _lmtp_destination(self, tok: Token) -> str:
        text = tok.text
        if text.startswith("/"):
            return values.format_string(tok, "lmtp socket")
        host, colon, port = text.rpartition(":")
        if not colon or not (host_name(host) or host.startswith("[")):
            raise Syntax(tok.pos, f"expected HOST:PORT or /socket after \"lmtp\", got {tok.describe()}")
        values.number(Token(Kind.WORD, port, tok.pos), "lmtp port", 1, 65535)
        return text

    def option(self, s: Stream, opt: Token, method: str, f: dict[str, object],
               seen: dict[str, Position]) -> None:
        """One action option `opt` (already consumed) into the fields `f`."""
        t = opt.text
        local = method in LOCAL_METHODS
        if t == "ttl":
            f["ttl"] = values.duration(s.expect_value('a delay after "ttl"'), "ttl")
        elif local and t in ("alias", "virtual", "userbase"):
            other = {"alias": "virtual", "virtual": "alias"}.get(t)
            if other in seen:
                raise Syntax(opt.pos, f'"{t}" cannot be used with "{other}"')
            f[t] = self.table_ref(s, t, t)
        elif local and t == "user":
            if method == "mbox":
                raise Syntax(opt.pos, '"user" cannot be used with mbox (mbox delivers as the '
                                      "recipient)")
            f["user"] = s.expect_value('a user name after "user"', ACTION_WORDS).text
        elif local and t == "wrapper":
            tok = s.expect_value('a wrapper name after "wrapper"', ACTION_WORDS)
            self.st.wrapper_refs.append((tok.text, tok.pos))
            f["wrapper"] = tok.text
        elif method == "maildir" and t == "junk":
            f["junk"] = True
        elif method == "lmtp" and t == "rcpt-to":
            f["rcpt_to"] = True
        elif method == "relay" and t in RELAY_OPTIONS:
            self._relay_option(s, opt, f)
        elif t in RELAY_OPTIONS:
            raise Syntax(opt.pos, f"{_quote(t)} is a relay option, not valid with {method}")
        elif t in (*LOCAL_OPTIONS, "junk", "rcpt-to"):
            where = {"junk": "maildir", "rcpt-to": "lmtp"}.get(t, "local delivery methods")
            raise Syntax(opt.pos, f"{_quote(t)} is an option of {where}, not valid with {method}")
        else:
            known = ["ttl", *(LOCAL_OPTIONS if local else RELAY_OPTIONS),
                     *({"maildir": ["junk"], "lmtp": ["rcpt-to"]}.get(method, []))]
            raise Syntax(opt.pos, f"unknown action option {opt.describe()}{_hint(t, known)}")
        # A wrapper wraps a command: the runtime runs it for `mda` (and the
        # commands of alias targets); the other methods deliver without one.
        wrapped = t == "wrapper" and method != "mda"
        self.use(f"action {method} wrapper" if wrapped else f"action {t}", opt.pos)

    def _relay_option(self, s: Stream, opt: Token, f: dict[str, object]) -> None:
        t = opt.text
        if t == "host":
            if s.is_punct("<"):
                f["host_table"] = self.table_ref(s, "host", "relay host")
            else:
                f["host"], _ = parse_url(s.expect_value('a relay URL or <table> after "host"',
                                                        ACTION_WORDS))
        elif t == "domain":
            f["domain"] = self.table_ref(s, "domain", "relay domain")
        elif t == "backup":
            f["backup"] = True
            if s.is_word("mx"):
                s.next()
                f["backup_mx"] = self._host_name(s.expect_value('a host name after "backup mx"',
                                                                ACTION_WORDS))
        elif t == "tls":
            f["tls"] = True
            if s.is_word("no-verify"):
                s.next()
                f["no_verify"] = True
        elif t == "auth":
            f["auth"] = self.table_ref(s, "auth", "relay auth")
        elif t == "helo":
            f["helo"] = self._host_name(s.expect_value('a host name after "helo"', ACTION_WORDS))
        elif t == "helo-src":
            f["helo_src"] = self.table_ref(s, "helo-src", "helo-src")
        elif t == "src":
            f["src"] = self.table_value(s, "src", ACTION_WORDS)
        elif t == "mail-from":
            f["mail_from"] = self.mail_from(s.expect_value(
                'an address, user or @domain after "mail-from"', ACTION_WORDS), "mail-from")
        elif t == "pki":
            tok = s.expect_value('a pki name after "pki"', ACTION_WORDS)
            self.st.pki_refs.append((tok.text, tok.pos))
            f["pki"] = tok.text
        elif t == "ca":
            tok = s.expect_value('a ca name after "ca"', ACTION_WORDS)
            self.st.ca_refs.append((tok.text, tok.pos))
            f["ca"] = tok.text

    @staticmethod
    def mail_from(tok: Token, after: str) -> str:
        """Relay `mail-from` (2012 `as`): `user`, `@domain` or `user@domain`."""
        text = tok.text
        user, at_sign, domain = text.rpartition("@") if "@" in text else (text, "", "")
        if not text or not _MAILADDR.match(text) or text == "@" \
                or (user and not _LOCAL_PART.match(user)) \
                or (at_sign and not host_name(domain)):
            raise Syntax(tok.pos, f'expected user, @domain or user@domain after "{after}",'
                                  f" got {tok.describe()}")
        return text

    def check_action(self, method: str, f: dict[str, object], seen: dict[str, Position]) -> None:
        """Rules between relay options (docs/configuration.md, action), at the later option."""
        if method != "relay":
            return
        if "host" in seen:
            for other in ("backup", "domain"):
                if other in seen:
                    later = max(seen["host"], seen[other])
                    raise Syntax(later, f'"host" cannot be used with "{other}"')
        if "helo" in seen and "helo-src" in seen:
            raise Syntax(max(seen["helo"], seen["helo-src"]),
                         '"helo" cannot be used with "helo-src"')
        host = f.get("host")
        if "auth" in seen:
            if "host" not in seen:
                raise Syntax(seen["auth"], '"auth" needs "host" (a relay URL with a label, '
                                           "smtp+tls://LABEL@host)")
            if isinstance(host, RelayHost) and host.label is None:
                raise Syntax(seen["auth"], '"auth" needs a label in the relay URL '
                                           f"({host.scheme}://LABEL@{host.host}): the label is "
                                           "the key of the credentials lookup")
        elif isinstance(host, RelayHost) and host.label is not None:
            raise Syntax(seen["host"], f"relay label {host.label!r} needs \"auth <table>\" "
                                       "to look its credentials up")

    # -- match -----------------------------------------------------------------

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

    # -- globals ---------------------------------------------------------------

    def _hostname(self, s: Stream, kw: Token) -> None:
        name = self._host_name(s.expect_value('a host name after "hostname"'))
        s.expect_end("hostname")
        if self.st.hostname is not None:
            raise Syntax(kw.pos, f"hostname already set at {_at(self.st.hostname[1])}")
        self.st.hostname = (name, kw.pos)
        self.use("hostname", kw.pos)

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

    def _smtp(self, s: Stream, kw: Token) -> None:
        opt = self._sub_option(s, "smtp", ["max-message-size", "limit", "sub-addr-delim",
                                           "ciphers", "workers"])
        if opt.text == "max-message-size":
            tok = s.expect_value('a size after "max-message-size"')
            self._set_limit("max_message_size", values.size(tok, "max-message-size"), opt)
            self.use("smtp max-message-size", opt.pos)
        elif opt.text == "sub-addr-delim":
            tok = s.expect_value('a character after "sub-addr-delim"')
            if len(tok.text) != 1 or tok.text.isalnum() or tok.text.isspace():
                raise Syntax(tok.pos, f"expected one punctuation character, got {tok.describe()}")
            self._set_limit("sub_addr_delim", tok.text, opt)
            self.use("smtp sub-addr-delim", opt.pos)
        elif opt.text == "ciphers":
            tok = s.expect_value('a cipher list after "ciphers"')
            if not tok.text or any(ch.isspace() for ch in tok.text):
                raise Syntax(tok.pos, f"expected an OpenSSL cipher list, got {tok.describe()}")
            self._set_limit("ciphers", tok.text, opt)
            self.use("smtp ciphers", opt.pos)
        elif opt.text == "workers":  # ProcessOptions: the supervisor reads it at start
            tok = s.expect_value('a number or "auto" after "workers"')
            self._set("processes", "smtp_workers", self._workers(tok), opt)
            self.use("smtp workers", opt.pos)
        else:
            for which, tok in self._limit_pairs(s, "smtp limit", SMTP_LIMITS):
                self._set_limit(SMTP_LIMITS[which.text], values.number(tok, which.text), which)
                self.use(f"smtp limit {which.text}", which.pos)
        s.expect_end(f"smtp {opt.text}")

    @staticmethod
    def _workers(tok: Token) -> int | None:
        """`auto` (None: the cores, resolved by the daemon) or 1..MAX_SMTP_WORKERS."""
        if tok.text == "auto":
            return None
        if not (tok.text.isascii() and tok.text.isdigit()):
            raise Syntax(tok.pos, f'expected a number or "auto" for smtp workers, '
                                  f"got {tok.describe()}")
        if len(tok.text) > 6 or not 1 <= int(tok.text) <= MAX_SMTP_WORKERS:
            raise Syntax(tok.pos, f'smtp workers must be 1..{MAX_SMTP_WORKERS} or "auto", '
                                  f"got {tok.text}")
        return int(tok.text)

    @staticmethod
    def _user(tok: Token) -> str:
        """A system user name for `queue user`; never root, whose processes could do anything."""
        if not _USER_NAME.match(tok.text) or len(tok.text) > MAX_USER_NAME:
            raise Syntax(tok.pos, f'expected a system user name such as _postillion (a-z, '
                                  f'0-9, "_" and "-", not starting with a digit or "-", at '
                                  f"most {MAX_USER_NAME} characters) for queue user, got "
                                  f"{tok.describe()}")
        if tok.text == "root":
            raise Syntax(tok.pos, 'queue user may not be "root": the smtp and queue processes '
                                  "run unprivileged")
        return tok.text

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

    def _queue(self, s: Stream, kw: Token) -> None:
        opt = self._sub_option(s, "queue", ["ttl", "compression", "min-free", "user",
                                            "encryption"])
        if opt.text == "encryption":
            raise Syntax(opt.pos, '"queue encryption" is not supported yet')
        if opt.text == "ttl":
            self._set("queue", "ttl", values.duration(s.expect_value('a delay after "ttl"'),
                                                      "queue ttl"), opt)
        elif opt.text == "min-free":  # in Limits: the SMTP session enforces it at MAIL
            tok = s.expect_value('a size after "min-free"')
            self._set_limit("queue_min_free", values.size(tok, "queue min-free"), opt)
        elif opt.text == "user":  # ProcessOptions: the supervisor reads it at start
            self._set("processes", "queue_user",
                      self._user(s.expect_value('a user name after "user"')), opt)
        else:
            self._set("queue", "compression", True, opt)
        s.expect_end(f"queue {opt.text}")
        self.use(f"queue {opt.text}", opt.pos)

    def _expire(self, s: Stream, kw: Token) -> None:
        """2012 `expire D` = `queue ttl D`."""
        self._set("queue", "ttl", values.duration(s.expect_value('a delay after "expire"'),
                                                  "expire"), kw)
        s.expect_end("expire")
        self.use("queue ttl", kw.pos)

    def _max_message_size(self, s: Stream, kw: Token) -> None:
        """2012 `max-message-size S` = `smtp max-message-size S`."""
        tok = s.expect_value('a size after "max-message-size"')
        self._set_limit("max_message_size", values.size(tok, "max-message-size"), kw)
        s.expect_end("max-message-size")
        self.use("smtp max-message-size", kw.pos)

    def _bounce(self, s: Stream, kw: Token) -> None:
        opt = self._sub_option(s, "bounce", ["warn-interval"])
        self._warn_intervals(s, opt)

    def _bounce_warn(self, s: Stream, kw: Token) -> None:
        """2012 `bounce-warn D[,D]` = `bounce warn-interval D[,D]`."""
        self._warn_intervals(s, kw)

    def _warn_intervals(self, s: Stream, opt: Token) -> None:
        delays = [values.duration(s.expect_value(f'a delay after "{opt.text}"'), opt.text)]
        while s.is_punct(","):
            s.next()
            delays.append(values.duration(s.expect_value('a delay after ","'), opt.text))
        if len(delays) > MAX_WARN_INTERVALS:
            raise Syntax(opt.pos, f"at most {MAX_WARN_INTERVALS} warn intervals, got {len(delays)}")
        s.expect_end(opt.text)
        self._set("bounce", "warn_interval", tuple(sorted(set(delays))), opt)
        self.use("bounce warn-interval", opt.pos)

    def _mta(self, s: Stream, kw: Token) -> None:
        opt = self._sub_option(s, "mta", ["max-deferred", "limit", "nameserver"])
        if opt.text == "nameserver":
            # Ours: which DNS server to ask (a local resolver, a test zone);
            # without it the system's /etc/resolv.conf, as every MTA.
            tok = s.expect_value('an IP address after "nameserver"')
            try:
                address = str(ipaddress.ip_address(tok.text))
            except ValueError:
                raise Syntax(tok.pos, f"expected an IP address after \"nameserver\", "
                                      f"got {tok.describe()}") from None
            port = 53
            if s.is_word("port"):
                s.next()
                port = values.number(s.expect_value('a port number after "port"'), "port", 1, 65535)
            self.st.mta_nameservers.append((address, port))
            self.use("mta nameserver", opt.pos)
        elif opt.text == "max-deferred":
            self._set("mta", "max_deferred",
                      values.number(s.expect_value('a number after "max-deferred"'),
                                    "max-deferred"), opt)
            self.use("mta max-deferred", opt.pos)
        else:
            domain = None
            if s.is_word("for"):
                s.next()
                s.expect_word("domain", "mta limit for")
                domain = s.expect_value('a domain after "for domain"').text
            if s.at_end():
                tok = s.peek()
                raise Syntax(tok.pos, f'expected a limit after "mta limit", got {tok.describe()}')
            while not s.at_end():
                which = s.peek()
                if which.kind is Kind.WORD and which.text in MTA_FAMILIES:
                    s.next()
                    self.st.mta_limits.append(MtaLimit("family", 4 if which.text == "inet4"
                                                       else 6, domain))
                    continue
                which = s.expect_value("an mta limit name")
                if which.kind is not Kind.WORD or which.text not in MTA_LIMITS:
                    raise Syntax(which.pos, f"unknown mta limit {which.describe()}"
                                            f"{_hint(which.text, [*MTA_LIMITS, *MTA_FAMILIES])}")
                tok = s.expect_value(f'a number after "{which.text}"')
                if which.text.startswith(("conn-delay", "reconn-delay")) and not tok.text.isdigit():
                    value = int(values.duration(tok, which.text))
                else:
                    value = values.number(tok, which.text, 0)
                self.st.mta_limits.append(MtaLimit(which.text, value, domain))
            self.use("mta limit", opt.pos)
        s.expect_end(f"mta {opt.text}")

    def _mda(self, s: Stream, kw: Token) -> None:
        opt = self._sub_option(s, "mda", ["limit", "wrapper"])
        if opt.text == "wrapper":
            name = s.expect_value('a wrapper name after "wrapper"')
            cmd = values.command(s.expect_value(f'a command after "wrapper {name.text}"'),
                                 "mda wrapper")
            s.expect_end("mda wrapper")
            if name.text in self.st.mda_wrappers:
                first = self.st.mda_wrappers[name.text][1]
                raise Syntax(name.pos, f"mda wrapper {name.text} already declared at {_at(first)}")
            self.st.mda_wrappers[name.text] = (cmd, name.pos)
        else:
            for which, tok in self._limit_pairs(s, "mda limit", MDA_LIMITS):
                self._set("mda", MDA_LIMITS[which.text], values.number(tok, which.text), which)
            s.expect_end("mda limit")
        self.use(f"mda {opt.text}", opt.pos)

    def _scheduler(self, s: Stream, kw: Token) -> None:
        opt = self._sub_option(s, "scheduler", ["limit"])
        for which, tok in self._limit_pairs(s, "scheduler limit", ["max-inflight"]):
            self._set("scheduler", "max_inflight", values.number(tok, which.text), which)
        s.expect_end("scheduler limit")
        self.use("scheduler limit", opt.pos)

    def _include(self, s: Stream, kw: Token) -> None:
        name = s.expect_value('a file name after "include"')
        s.expect_end("include")
        if not name.text:
            raise Syntax(name.pos, 'expected a file name after "include", got ""')
        path = name.text
        if not os.path.isabs(path):
            path = os.path.normpath(os.path.join(os.path.dirname(kw.pos.file), path))
        self.parse_path(path, name.pos)

    # -- metrics ---------------------------------------------------------------

    def _metrics(self, s: Stream, kw: Token) -> None:
        """`metrics listen on ADDRESS port PORT` (docs/metrics.md): once, an
        IP literal only -- an interface or host name would make where the
        endpoint answers depend on the machine's state at start."""
        s.expect_word("listen", "metrics")
        s.expect_word("on", "metrics listen")
        tok = s.expect_value('an IP address after "metrics listen on"')
        try:
            address = str(ipaddress.ip_address(tok.text.removeprefix("[").removesuffix("]")))
        except ValueError:
            raise Syntax(tok.pos, 'expected an IP address (such as 127.0.0.1 or ::1) after '
                                  f'"metrics listen on", got {tok.describe()}') from None
        s.expect_word("port", "metrics listen on ADDRESS")
        port = values.number(s.expect_value('a port after "port"'), "port", 1, 65535)
        s.expect_end("metrics listen on")
        if self.st.metrics is not None:
            raise Syntax(kw.pos, f"metrics already set at {_at(self.st.metrics.pos)}")
        self.st.metrics = MetricsDecl(address, port, kw.pos)
        self.use("metrics", kw.pos)

    # -- the end -----------------------------------------------------------------

    def config(self, path: str) -> Config:
        """Check references, then build the Config or raise every error."""
        st = self.st
        for name, decl in st.implied_pkis.items():
            st.pkis.setdefault(name, decl)
        self._check_references()
        if st.errors:
            raise ConfigError(self._sorted_errors())
        hostname = st.hostname[0] if st.hostname else files.default_hostname()
        limits = replace(Limits(), **{k: v for k, (v, _) in st.limits.items()})

        def section(cls, name):  # type: ignore[no-untyped-def]
            return cls(**{f: v for (sec, f), (v, _) in st.options.items() if sec == name})

        mda = replace(section(MdaOptions, "mda"),
                      wrappers=tuple((n, c) for n, (c, _) in st.mda_wrappers.items()))
        mta = replace(section(MtaOptions, "mta"), limits=tuple(st.mta_limits),
                      nameservers=tuple(st.mta_nameservers))
        return Config(
            path=path,
            hostname=hostname,
            tables=dict(st.tables),
            listeners=tuple(st.listeners),
            actions=dict(st.actions),
            matches=tuple(st.matches),
            limits=limits,
            pkis=dict(st.pkis),
            cas=dict(st.cas),
            queue=section(QueueOptions, "queue"),
            bounce=section(BounceOptions, "bounce"),
            mta=mta,
            mda=mda,
            scheduler=section(SchedulerOptions, "scheduler"),
            processes=section(ProcessOptions, "processes"),
            metrics=st.metrics,
            grammar="2012" if "2012" in st.rule_grammar else "modern",
            features=tuple(st.features),
            table_uses=tuple(TableUse(name, USE_SERVICES[use], at)
                             for name, at, use in st.table_refs
                             if use in USE_SERVICES and name in st.tables),
        )

    def _check_references(self) -> None:
        st = self.st
        for name, at, use in st.table_refs:
            decl = st.tables.get(name)
            if decl is None:
                if name in st.tried_tables:
                    continue
                if name in BUILTIN_TABLES:
                    self.use(f"table <{name}>", at)
                    continue
                declared = [n for n in st.tables if not n.startswith(ANON_PREFIX)]
                close = did_you_mean(name, declared)
                hint = f"; did you mean {close}?" if close else ""
                st.errors.append((at, f"no such table: {name}{hint}"))
            elif use in MAP_USES and decl.config is None \
                    and decl.backend == "static" and not decl.is_map and decl.items:
                st.errors.append((at, f'table {name} is a list; "{use}" needs a map '
                                      f"or a backend (declared at {_at(decl.pos)})"))
        for name, at in st.action_refs:
            if name not in st.actions and name not in st.tried_actions:
                close = did_you_mean(name, st.actions)
                hint = f'; did you mean "{close}"?' if close else ""
                st.errors.append((at, f"no such action: {_quote(name)}{hint}"))
        for name, at in st.pki_refs:
            if name not in st.pkis and name not in st.tried_pkis:
                close = did_you_mean(name, st.pkis)
                hint = f"; did you mean {close}?" if close else ""
                st.errors.append((at, f"no such pki: {name}{hint}"))
        for name, at in st.ca_refs:
            if name not in st.cas:
                close = did_you_mean(name, st.cas)
                hint = f"; did you mean {close}?" if close else ""
                st.errors.append((at, f"no such ca: {name}{hint}"))
        for name, at in st.wrapper_refs:
            if name not in st.mda_wrappers:
                close = did_you_mean(name, st.mda_wrappers)
                hint = f"; did you mean {close}?" if close else ""
                st.errors.append((at, f'no such mda wrapper: {name} (declare it with "mda wrapper'
                                      f' {name} COMMAND"){hint}'))
        for decl in st.pkis.values():
            for part in ("cert", "key"):
                if getattr(decl, part) is None and decl.name not in st.implied_pkis:
                    st.errors.append((decl.pos, f"pki {decl.name} has no {part}: add "
                                                f'"pki {decl.name} {part} FILE"'))

    def _sorted_errors(self) -> list[tuple[Position, str]]:
        """Unique errors in reading order, an included file's where it is included."""
        unique = list(dict.fromkeys(self.st.errors))
        order = self.st.order
        return sorted(unique, key=lambda e: (*order.get(e[0].file, ((0, 0),)), (e[0].line, e[0].column)))
