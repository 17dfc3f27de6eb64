"""`pki NAME cert|key|dhe ...` and `ca NAME cert FILE` (docs/configuration.md, pki and ca).

A pki is gathered from several statements (one per field); that it has
both a cert and a key is checked once the whole file is read (parser.py).
Relative files resolve against the declaring file, as tables do.
"""

from __future__ import annotations

from dataclasses import replace

from postillion.config import values
from postillion.config.grammar.base import Grammar, _at, _hint
from postillion.config.lexer import Kind, Token
from postillion.config.model import CaDecl, PkiDecl, Position
from postillion.config.stream import Stream, Syntax


class PkiGrammar(Grammar):
    """`pki` and `ca` statements, and the pki a 2012 `certificate NAME` implies."""

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
