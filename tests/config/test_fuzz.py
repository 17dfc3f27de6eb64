"""Property: parse() on any text returns a Config or raises ConfigError.

Any other exception, or a hang, is a bug (docs/architecture.md: "never a traceback").
Two generators: arbitrary text, and text built from the grammar's own
words and punctuation, which reaches much deeper into the parser.
"""

from __future__ import annotations

import time
from pathlib import Path
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
    "max-inflight", "ciphers", "sub-addr-delim", "workers", "min-free", "root", "%{rcpt.user}", "%{bad}", "\"a | b\"",
    # the 2012 grammar
    "accept", "tagged", "sender", "users", "deliver", "to", "via", "as", "source",
    "certificate", "expire", "ssl", "tls+auth://l@h", "bounce-warn",
]

# Words of the real configs (good corpus, examples), recombined: reaches
# every statement's deeper states, which random words seldom do.
_HERE = Path(__file__).parent
CORPUS_LINES = sorted({line for path in [*_HERE.glob("good/*.conf"), *_HERE.glob("examples/*.conf")]
                       for line in path.read_text().splitlines() if line.strip()})
mutated_line = st.sampled_from(CORPUS_LINES).flatmap(
    lambda line: st.lists(st.sampled_from(line.split()), min_size=1, max_size=12).map(" ".join))

texts = st.one_of(
    st.lists(st.one_of(st.sampled_from(CORPUS_LINES), mutated_line), max_size=12).map("\n".join),
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


# Round trip on configs that parse: random valid lines of either grammar, with
# awkward values (quotes, backslashes, blanks, keywords) in the quoted places.
PRELUDE = ('table m { k = v }\ntable l { a, b }\npki p cert "/c"\npki p key "/k"\n'
           'table c { lbl = "u:p" }\n')
VALUE = st.text(alphabet='ab "\\\'#$!{}<>,=\t-_.@/:', min_size=1, max_size=12).filter(
    lambda v: not v.endswith("\\"))
MODERN = [
    'action "{v}" maildir userbase <m>', 'action "x{v}" mbox alias <m> ttl 2h',
    'action "r{v}" relay host smtp+tls://lbl@h.example auth <c> helo "h.example"',
    'action "s{v}" relay src {{ "{v}", 192.0.2.1 }} mail-from "{v}"',
    'listen on "{v}" port 2525 tls-require verify pki p hostname "{v}" tag "{v}"',
    'match from src "{v}" !for domain {{ "{v}" }} reject',
    'match tag "{v}" !auth <l> for rcpt-to regex <l> reject',
    'match from rdns for any reject', 'smtp ciphers "{v}"',
    'mta limit for domain "{v}" max-conn-per-host 3', 'mda wrapper "{v}" "/bin/w {v}"',
]
LEGACY = [
    'accept tagged "{v}" for domain "{v}" users <m> deliver to maildir "/m/{v}"',
    'accept from "{v}" sender <l> for any relay via tls+auth://lbl@h.example auth <c> as "@{v}"',
    'reject from any for domain {{ "{v}", x }}', 'accept for local alias <m> deliver to mbox',
    'accept for any relay backup "h.example" expire 1d', 'expire 2d',
]


@settings(deadline=None, max_examples=200)
@given(st.sampled_from([MODERN, LEGACY]).flatmap(
    lambda pool: st.lists(st.tuples(st.sampled_from(pool), VALUE), min_size=1, max_size=8)))
def test_convert_round_trips_on_valid_configs(lines: list[tuple[str, str]]) -> None:
    seen: set[str] = set()
    body = []
    for template, value in lines:
        line = template.format(v=value.replace('"', '\\"').replace("\\ ", "\\\\ "))
        key = line.split('"')[1] if line.startswith(("action", "mda wrapper")) else line
        if key not in seen:   # one declaration per name
            seen.add(key)
            body.append(line)
    text = PRELUDE + "\n".join(body) + "\n"
    with mock.patch.object(files_module, "default_hostname", lambda: "fuzz.test"):
        try:
            config = parse(text, "/nonexistent/fuzz.conf")
        except ConfigError:
            return   # a value the grammar refuses here (a bad host name...)
        try:
            converted = to_modern(config)
        except ConvertError:
            return
        again = parse(converted, "/nonexistent/fuzz.conf")
        assert normalise(again) == normalise(config)
