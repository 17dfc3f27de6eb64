"""Property: parse() on any text returns a Config or raises ConfigError.

Any other exception, or a hang, is a bug (DESIGN.md: "never a traceback").
Two generators: arbitrary text, and text built from the grammar's own
words and punctuation, which reaches much deeper into the parser.
"""

from __future__ import annotations

import time
from unittest import mock

from hypothesis import example, given, settings
from hypothesis import strategies as st

from postillion.config import ConfigError, parse
from postillion.config import files as files_module
from postillion.config.model import Config
from postillion.config.normal import ConvertError, normalise, to_modern

FRAGMENTS = [
    "table", "listen", "on", "action", "match", "from", "for", "any", "local", "src",
    "domain", "reject", "maildir", "alias", "virtual", "userbase", "port", "hostname",
    "smtp", "limit", "max-rcpt", "max-mails", "max-message-size", "include", "tls", "relay",
    "regex", "t", "u", "a", "x", "25", "0", "65536", "35M", "10k", "/abs/path",
    "sqlite:/x.conf", "file:rel", "proc:", '"q"', "'s'", '"', "'", "\\\n", "\\",
    "{", "}", ",", "<", ">", "=", "=>", "!", "$", "$m", "m = ", "#", " ", "\n", "\t",
    "\r\n", "\x00", "\u00e9", "\ufeff",
    # the rest of the modern grammar
    "pki", "ca", "cert", "key", "dhe", "auto", "smtps", "tls-require", "verify", "auth",
    "auth-optional", "insecure-auth", "senders", "masquerade", "hostnames", "tag",
    "mask-src", "no-dsn", "received-auth", "inet4", "inet6", "mbox", "lmtp", "mda",
    "forward-only", "expand-only", "junk", "user", "wrapper", "ttl", "4d", "30m", "host",
    "backup", "mx", "no-verify", "helo", "helo-src", "mail-from", "rcpt-to", "socket",
    "rdns", "smtp+tls://l@h.example", "smtps://h:465", "lmtp://h:24", "ssl://h",
    "queue", "compression", "bounce", "warn-interval", "mta", "max-deferred", "scheduler",
    "max-inflight", "ciphers", "sub-addr-delim", "%{rcpt.user}", "%{bad}", "\"a | b\"",
    # the 2012 grammar
    "accept", "tagged", "sender", "users", "deliver", "to", "via", "as", "source",
    "certificate", "expire", "ssl", "tls+auth://l@h", "bounce-warn",
]

texts = st.one_of(
    st.text(max_size=400),
    st.lists(st.sampled_from(FRAGMENTS), max_size=80).map(" ".join),
    st.lists(st.sampled_from(FRAGMENTS), max_size=80).map("".join),
)


@settings(deadline=None, max_examples=300)
@given(texts)
@example('m = "$m"\nlisten on $m\n')
@example("table t {\nmatch\n")
@example('table t { a = b, c }\ninclude "/"\ninclude "\x00"\n')
@example("match from src { a b } for domain <t> action x\n")
@example("accept for any relay via tls+auth://l@h auth <t>\ntable t { l = x }\n")
@example("match from any for any action a\naccept for any deliver to mbox\n")
def test_parse_raises_only_config_error(text: str) -> None:
    started = time.monotonic()
    with mock.patch.object(files_module, "default_hostname", lambda: "fuzz.test"):
        try:
            config = parse(text, "/nonexistent/fuzz.conf")
        except ConfigError as err:
            assert err.errors
            for pos, message in err.errors:
                assert pos.line >= 1 and pos.column >= 1 and message
                assert "\n" not in message
        else:
            assert isinstance(config, Config)
            try:
                again = parse(to_modern(config), "/nonexistent/fuzz.conf")
            except ConvertError:
                pass
            else:
                assert normalise(again) == normalise(config)
    assert time.monotonic() - started < 10, "parsing must terminate promptly"
