"""`listen on IF [OPTION ...]` (docs/configuration.md, listen on).

One statement makes one `ListenDecl` (two for the 2012 `ssl`: SMTPS on
465 and STARTTLS on 25).  Options that exclude each other, and `auth` or
`pki` without TLS, are refused here, at the option that breaks the rule.
"""

from __future__ import annotations

from dataclasses import replace

from postillion.config import values
from postillion.config.grammar.base import _hint, _quote
from postillion.config.grammar.pki import PkiGrammar
from postillion.config.grammar.tables import TableGrammar
from postillion.config.lexer import Kind, Token
from postillion.config.model import ListenDecl, Position
from postillion.config.stream import Stream, Syntax

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


class ListenGrammar(TableGrammar, PkiGrammar):
    """`listen on` statements; they name tables, pki and ca."""

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
