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

This module reads the files (includes, macros through the lexer),
dispatches each statement on its first word (`Parser.__init__`'s table),
and builds the Config once everything is read; the grammar of each
statement family is in `grammar/` (tables, pki, listen, action, match,
options, mta), whose classes `Parser` inherits.

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
from dataclasses import replace
from typing import Callable, Mapping

from postillion.config import files, values
from postillion.config.errors import ConfigError, did_you_mean
from postillion.config.grammar.action import ActionGrammar
from postillion.config.grammar.base import _at, _hint, _quote
from postillion.config.grammar.state import _State
from postillion.config.grammar.listen import ListenGrammar
from postillion.config.grammar.match import MatchGrammar
from postillion.config.grammar.mta import MTA_FAMILIES, MTA_LIMITS, MtaGrammar  # noqa: F401
from postillion.config.grammar.options import OptionsGrammar
from postillion.config.grammar.tables import ANON_PREFIX, BUILTIN_TABLES, MAP_USES, USE_SERVICES
from postillion.config.lexer import MACRO_NAME, Kind, Lexer, Token
from postillion.config.model import (
    BounceOptions,
    Config,
    Limits,
    MdaOptions,
    MetricsDecl,
    MtaOptions,
    Position,
    ProcessOptions,
    QueueOptions,
    SchedulerOptions,
    TableUse,
)
from postillion.config.stream import Skip, Stream, Syntax

MAX_INCLUDE_DEPTH = 16

# Not supported yet (docs/configuration.md): refused at parse time, whatever the runtime does.
OUT_OF_SCOPE_STATEMENTS = frozenset({"filter", "proc", "srs", "admd", "dkim"})
GRAMMAR_2012 = frozenset({"accept", "reject"})


class Parser(ListenGrammar, ActionGrammar, MatchGrammar, OptionsGrammar, MtaGrammar):
    """One parse of a top-level file: feed it text, ask for the Config.

    The statement handlers (`_table`, `_listen`, `_smtp` ...) come from the
    grammar families it inherits (grammar/); `include` is here, with files.
    """

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

        # The top-level statements: first word -> handler.  The handlers are
        # the grammar families' (grammar/), `include` this module's.
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
