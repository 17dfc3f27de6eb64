"""The 2012 `accept`/`reject` rules, compiled into the modern model.

    accept [tagged [!]TAG] [from any|local|<t>|NET] [sender <t>]
           for any|local|domain NAME|domain <t>
           [alias <t>|virtual <t>] [users <t>|userbase <t>]
           ( deliver to maildir [PATH] | deliver to mbox | deliver to mda "CMD"
           | deliver to lmtp HOST:PORT
           | relay [backup [MX]] [as ADDR] [source <t> [helo <t>]]
           | relay via URL [certificate NAME] [auth <t>] [as ADDR] [source <t> [helo <t>]] )
    (relay also takes the 5.x spellings `pki NAME` = certificate, `hostname
    NAME` = helo NAME, `hostnames <t>` = helo-src <t>)
           [expire D] [tagged TAG]
    reject [tagged TAG] [from ...] [sender <t>] for ...

Options may come in any order (the 2012 parser was not strict either, and
`tagged` existed both first and last); each at most once, `for` required.

Each `accept` becomes an action named `legacy-<8 hex of SHA-256 of the
statement>` (the statement's tokens joined by one blank, quoted strings
re-quoted: stable under reordering and re-indentation, so queued envelopes
keep finding their action) plus match rules, by the table of docs/configuration.md
(The 2012 grammar).
`from local` meant "local or authenticated" in 2012: it becomes two
consecutive rules, `from local ...` and `auth from any ...`, with the same
action -- under first-match-wins exactly the same decision, and expressible
in the modern grammar, so `--convert` can print it.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from postillion.config import values
from postillion.config.lexer import Kind, Token
from postillion.config.model import ActionDecl, Criterion, MatchDecl, Position
from postillion.config.relay import parse_url
from postillion.config.stream import Stream, Syntax

if TYPE_CHECKING:
    from postillion.config.parser import Parser

LEGACY_WORDS = frozenset({
    "tagged", "from", "sender", "for", "alias", "virtual", "users", "userbase", "deliver",
    "relay", "expire", "via", "as", "source", "helo", "certificate", "auth", "backup", "to",
    "pki", "hostname", "hostnames",
})
RULE_OPTIONS = ("tagged", "from", "sender", "for", "alias", "virtual", "users", "userbase",
                "deliver", "relay", "expire")
DELIVER_METHODS = ("maildir", "mbox", "mda", "lmtp")
# Relay options; `pki` = `certificate`, `hostname NAME` = helo, `hostnames <t>`
# = helo-src (5.x spellings of the same options, accepted too).
RELAY_2012 = ("backup", "via", "certificate", "pki", "auth", "as", "source", "helo",
              "hostname", "hostnames")


def action_name(tokens: list[Token]) -> str:
    """`legacy-` + 8 hex of SHA-256 of the statement as tokens."""
    words = []
    for tok in tokens:
        if tok.kind is Kind.STRING:
            words.append('"' + tok.text.replace("\\", "\\\\").replace('"', '\\"') + '"')
        else:
            words.append(tok.text)
    digest = hashlib.sha256(" ".join(words).encode("utf-8", "surrogatepass")).hexdigest()
    return f"legacy-{digest[:8]}"


def rule(p: Parser, s: Stream, kw: Token) -> None:
    """One `accept` or `reject` statement (kw already consumed)."""
    p.rules_grammar("2012", kw.pos)
    accept = kw.text == "accept"
    seen: dict[str, Position] = {}
    crit: dict[str, Criterion] = {}
    f: dict[str, object] = {}
    local_seen: dict[str, Position] = {}
    method: str | None = None
    while not s.at_end():
        opt = s.peek()
        if opt.kind is not Kind.WORD or opt.text not in RULE_OPTIONS:
            hint = ""
            if opt.kind is Kind.WORD:
                from postillion.config.parser import _hint
                hint = _hint(opt.text, RULE_OPTIONS)
            raise Syntax(opt.pos, f"expected an {kw.text} option ({', '.join(RULE_OPTIONS)}),"
                                  f" got {opt.describe()}{hint}")
        if opt.text in seen:
            raise Syntax(opt.pos, f'"{opt.text}" given twice (first at {seen[opt.text]})')
        s.next()
        seen[opt.text] = opt.pos
        t = opt.text
        if not accept and t in ("alias", "virtual", "users", "userbase", "deliver", "relay",
                                "expire"):
            raise Syntax(opt.pos, f'"{t}" cannot be used with reject')
        if t == "tagged":
            negate = s.is_punct("!")
            if negate:
                s.next()
            crit["tag"] = Criterion("tag", opt.pos, negate, p.table_value(s, "tagged",
                                                                          LEGACY_WORDS))
            p.use("match tag", opt.pos)
        elif t == "from":
            crit["from"] = _from(p, s, opt)
        elif t == "sender":
            crit["mail-from"] = Criterion("mail-from", opt.pos, False,
                                          p.table_value(s, "sender", LEGACY_WORDS))
            p.use("match mail-from", opt.pos)
        elif t == "for":
            crit["for"] = _for(p, s, opt)
        elif t in ("alias", "virtual", "users", "userbase"):
            field = "userbase" if t == "users" else t
            other = {"alias": "virtual", "virtual": "alias", "users": "userbase",
                     "userbase": "users"}[t]
            if other in seen:
                raise Syntax(opt.pos, f'"{t}" cannot be used with "{other}"')
            # `virtual <list>` is fine with relay (backup MX): the use is
            # recorded once the method is known.
            f[field] = p.table_ref(s, t, "2012 virtual" if t == "virtual" else field)
            local_seen[field] = opt.pos
        elif t == "deliver":
            if "relay" in seen:
                raise Syntax(opt.pos, '"deliver" cannot be used with "relay"')
            s.expect_word("to", "deliver")
            how = s.peek()
            if not (how.kind is Kind.WORD and how.text in DELIVER_METHODS):
                raise Syntax(how.pos, f"expected maildir, mbox, mda or lmtp after \"deliver to\","
                                      f" got {how.describe()}")
            s.next()
            method = how.text
            p.use(f"action {method}", how.pos)
            _deliver(p, s, how, f)
        elif t == "relay":
            if "deliver" in seen:
                raise Syntax(opt.pos, '"relay" cannot be used with "deliver"')
            method = _relay(p, s, opt, f)
        elif t == "expire":
            f["ttl"] = values.duration(s.expect_value('a delay after "expire"'), "expire")
            p.use("action ttl", opt.pos)
    end = s.peek()
    tokens = list(s.taken)
    s.expect_end(kw.text)
    if "for" not in crit:
        raise Syntax(end.pos, f'expected "for" in {kw.text} (for any, for local, for domain X),'
                              f" got {end.describe()}")
    if accept and method is None:
        raise Syntax(end.pos, f'expected "deliver to ..." or "relay" in accept, '
                              f"got {end.describe()}")
    extra: list[Criterion] = []
    if method == "relay":
        for field in ("alias", "userbase"):
            if field in f:
                raise Syntax(local_seen[field], f'"{"users" if field == "userbase" else field}"'
                                                " cannot be used with relay")
        if "virtual" in f:   # relay + virtual <list>: relay only listed recipients
            table = str(f.pop("virtual"))
            extra.append(Criterion("rcpt-to", local_seen["virtual"], False, table))
            p.st.table_refs.append((table, local_seen["virtual"], "rcpt-to"))
            p.use("match rcpt-to", local_seen["virtual"])
    elif "virtual" in f:
        p.st.table_refs.append((str(f["virtual"]), local_seen["virtual"], "virtual"))
    for field, pos in local_seen.items():
        if field in f:
            p.use(f"action {field}", pos)
    name: str | None = None
    if accept:
        assert method is not None
        name = action_name(tokens)
        p.st.tried_actions.add(name)
        p.st.actions.setdefault(name, ActionDecl(name, method, kw.pos, **f))  # type: ignore[arg-type]
    frm = crit.get("from") or Criterion("from-local", kw.pos)
    if "from" not in crit:
        p.use("match from local", kw.pos)
    others = [c for k, c in crit.items() if k not in ("from", "for")] + extra
    p.st.matches.append(MatchDecl((frm, crit["for"], *others), kw.pos, name))
    if frm.kind == "from-local":
        # 2012 `from local` = local or authenticated (docs/configuration.md).
        p.use("match auth", frm.pos)
        auth = (Criterion("from-any", frm.pos), crit["for"], Criterion("auth", frm.pos), *others)
        p.st.matches.append(MatchDecl(auth, kw.pos, name))


def _any_or_local(p: Parser, s: Stream, opt: Token, side: str) -> Criterion | None:
    """`from|for any|local`, as in 6.8; None when the next word is neither."""
    tok = s.peek()
    if tok.kind is Kind.WORD and tok.text in ("any", "local"):
        s.next()
        p.use(f"match {side} {tok.text}", opt.pos)
        return Criterion(f"{side}-{tok.text}", opt.pos)
    return None


def _from(p: Parser, s: Stream, opt: Token) -> Criterion:
    """`from any|local|<t>|NET|{ ... }`: any/local as in 6.8, the rest = from src."""
    if (criterion := _any_or_local(p, s, opt, "from")) is not None:
        return criterion
    p.use("match from src", opt.pos)
    return Criterion("from-src", opt.pos, False, p.table_value(s, "from", LEGACY_WORDS))


def _for(p: Parser, s: Stream, opt: Token) -> Criterion:
    if (criterion := _any_or_local(p, s, opt, "for")) is not None:
        return criterion
    tok = s.peek()
    if tok.kind is Kind.WORD and tok.text == "domain":
        s.next()
        p.use("match for domain", opt.pos)
        return Criterion("for-domain", opt.pos, False, p.table_value(s, "for domain",
                                                                     LEGACY_WORDS))
    raise Syntax(tok.pos, f'expected any, local or domain after "for", got {tok.describe()}')


def _deliver(p: Parser, s: Stream, how: Token, f: dict[str, object]) -> None:
    if how.text == "maildir":
        tok = s.peek()
        if tok.kind is Kind.STRING or (tok.kind is Kind.WORD and tok.text not in LEGACY_WORDS):
            s.next()
            if not tok.text:
                raise Syntax(tok.pos, 'expected a maildir path, got ""')
            f["path"] = values.format_string(tok, "maildir path")
    elif how.text == "mda":
        f["command"] = values.command(s.expect_value('a command after "deliver to mda"',
                                                     LEGACY_WORDS), "mda command")
    elif how.text == "lmtp":
        tok = s.expect_value('HOST:PORT or /socket after "deliver to lmtp"', LEGACY_WORDS)
        f["destination"] = p._lmtp_destination(tok)


def _relay(p: Parser, s: Stream, opt: Token, f: dict[str, object]) -> str:
    """`relay [backup [MX]] | relay via URL`, then as/source/helo/certificate/auth."""
    seen: dict[str, Position] = {}
    method = "relay"
    while not s.at_end():
        tok = s.peek()
        if not (tok.kind is Kind.WORD and tok.text in RELAY_2012):
            break
        s.next()
        if tok.text in seen:
            raise Syntax(tok.pos, f'"{tok.text}" given twice (first at {seen[tok.text]})')
        seen[tok.text] = tok.pos
        t = tok.text
        if t == "backup":
            if "via" in seen:
                raise Syntax(tok.pos, '"backup" cannot be used with "via"')
            f["backup"] = True
            nxt = s.peek()
            if nxt.kind is Kind.STRING or (nxt.kind is Kind.WORD and nxt.text not in LEGACY_WORDS):
                f["backup_mx"] = p._host_name(s.next())
            p.use("action backup", tok.pos)
        elif t == "via":
            if "backup" in seen:
                raise Syntax(tok.pos, '"via" cannot be used with "backup"')
            url_tok = s.expect_value('a relay URL after "via"', LEGACY_WORDS)
            relay, _ = parse_url(url_tok, legacy=True)
            if relay.scheme == "lmtp":
                method = "lmtp"
                f["destination"] = f"{relay.host}:{relay.port}"
            elif relay.scheme == "backup":
                f["backup"] = True
                f["backup_mx"] = relay.host
                p.use("action backup", tok.pos)
            else:
                f["host"] = relay
                p.use("action host", tok.pos)
                seen["host"] = tok.pos
        elif t in ("certificate", "pki"):
            if "certificate" in seen and "pki" in seen:
                raise Syntax(tok.pos, '"pki" cannot be used with "certificate"')
            name = s.expect_value(f'a certificate name after "{t}"', LEGACY_WORDS)
            if t == "certificate":
                p.implied_pki(name.text, name.pos)
            p.st.pki_refs.append((name.text, name.pos))
            f["pki"] = name.text
            p.use("action pki", tok.pos)
        elif t == "auth":
            f["auth"] = p.table_ref(s, "auth", "relay auth")
            p.use("action auth", tok.pos)
        elif t == "as":
            f["mail_from"] = p.mail_from(s.expect_value('an address after "as"', LEGACY_WORDS),
                                         "as")
            p.use("action mail-from", tok.pos)
        elif t == "source":
            f["src"] = p.table_value(s, "source", LEGACY_WORDS)
            p.use("action src", tok.pos)
        elif t in ("helo", "hostnames"):
            if "helo" in seen and "hostnames" in seen:
                raise Syntax(tok.pos, '"hostnames" cannot be used with "helo"')
            f["helo_src"] = p.table_ref(s, t, "helo-src")
            p.use("action helo-src", tok.pos)
        elif t == "hostname":
            f["helo"] = p._host_name(s.expect_value('a host name after "hostname"',
                                                    LEGACY_WORDS))
            p.use("action helo", tok.pos)
    if "helo" in seen and "source" not in seen:
        raise Syntax(seen["helo"], '"helo" needs "source" (2012: the HELO name follows the'
                                   " source address)")
    if "hostname" in seen and ("helo" in seen or "hostnames" in seen):
        raise Syntax(seen["hostname"], '"hostname" cannot be used with "helo" or "hostnames"')
    if method == "lmtp":
        for other in ("certificate", "pki", "auth", "as", "source", "helo", "hostname",
                      "hostnames"):
            if other in seen:
                raise Syntax(seen[other], f'"{other}" cannot be used with lmtp://')
        p.use("action lmtp", opt.pos)
        return method
    p.use("action relay", opt.pos)
    p.check_action("relay", f, seen)
    return method
