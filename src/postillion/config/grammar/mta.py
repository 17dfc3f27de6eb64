"""`mta nameserver IP [port N]`, `mta max-deferred N` and `mta limit [for
domain D] KEY N ...` (docs/configuration.md, Global options; the MTA's
limits are read by mta/limits.py).
"""

from __future__ import annotations

import ipaddress

from postillion.config import values
from postillion.config.grammar.base import Grammar, _hint
from postillion.config.lexer import Kind, Token
from postillion.config.model import MtaLimit
from postillion.config.stream import Stream, Syntax

MTA_LIMITS = (  # docs/configuration.md, Global options; delays are seconds
    "max-conn-per-host", "max-conn-per-route", "max-conn-per-source", "max-conn-per-connector",
    "max-conn-per-relay", "max-conn-per-domain", "conn-delay-host", "conn-delay-route",
    "conn-delay-source", "conn-delay-connector", "conn-delay-relay", "conn-delay-domain",
    "reconn-delay-host", "reconn-delay-route", "reconn-delay-source", "reconn-delay-connector",
    "reconn-delay-relay", "reconn-delay-domain", "session-mail-max", "max-failures-per-session",
    "max-mx-tried",
)
MTA_FAMILIES = ("inet4", "inet6")


class MtaGrammar(Grammar):
    """`mta` statements."""

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
