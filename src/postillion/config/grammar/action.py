"""`action NAME METHOD [OPTION ...]` (docs/configuration.md, action).

The local methods (maildir, mbox, mda, lmtp, expand-only, forward-only)
and `relay` with its options.  `option`, `mail_from` and `check_action`
are shared with the 2012 grammar (`legacy.py`), which compiles its
`deliver to` / `relay` into the same `ActionDecl`.
"""

from __future__ import annotations

import re

from postillion.config import values
from postillion.config.grammar.base import _at, _hint, _quote
from postillion.config.grammar.tables import TableGrammar
from postillion.config.lexer import Kind, Token
from postillion.config.model import LOCAL_METHODS, METHODS, ActionDecl, Position, RelayHost
from postillion.config.relay import host_name, parse_url
from postillion.config.stream import Stream, Syntax

LOCAL_OPTIONS = ("alias", "virtual", "userbase", "user", "wrapper")
RELAY_OPTIONS = ("host", "domain", "backup", "tls", "auth", "helo", "helo-src", "src",
                 "mail-from", "pki", "ca")
ACTION_WORDS = frozenset({*LOCAL_OPTIONS, *RELAY_OPTIONS, "ttl", "junk", "rcpt-to"})

_OPTION_SHAPE = re.compile(r"[a-z][a-z0-9-]*\Z")  # a bare word that reads as a keyword
_MAILADDR = re.compile(r"[^\s@<>]*@?[^\s@<>]*\Z")
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*/=?^_`{|}~+.-]{1,64}\Z")


class ActionGrammar(TableGrammar):
    """`action` statements; their options name tables, pki, ca and mda wrappers."""

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
