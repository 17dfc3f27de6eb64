"""Property: parse() on any text returns a Config or raises ConfigError.

Any other exception, or a hang, is a bug (DESIGN.md: "never a traceback").
Two generators: arbitrary text, and text built from the grammar's own
words and punctuation, which reaches much deeper into the parser.
"""

from __future__ import annotations

from unittest import mock

from hypothesis import example, given, settings
from hypothesis import strategies as st

from postillion.config import ConfigError, parse
from postillion.config import files as files_module
from postillion.config.model import Config

FRAGMENTS = [
    "table", "listen", "on", "action", "match", "from", "for", "any", "local", "src",
    "domain", "reject", "maildir", "alias", "virtual", "userbase", "port", "hostname",
    "smtp", "limit", "max-rcpt", "max-mails", "max-message-size", "include", "tls", "relay",
    "regex", "t", "u", "a", "x", "25", "0", "65536", "35M", "10k", "/abs/path",
    "sqlite:/x.conf", "file:rel", "proc:", '"q"', "'s'", '"', "'", "\\\n", "\\",
    "{", "}", ",", "<", ">", "=", "=>", "!", "$", "$m", "m = ", "#", " ", "\n", "\t",
    "\r\n", "\x00", "é", "\ufeff",
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
def test_parse_raises_only_config_error(text: str) -> None:
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
