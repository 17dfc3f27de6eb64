"""Which tables each process opens: the queue process only what a delivery
reads, so a credentials table never sits in a process that does not check
AUTH."""

from __future__ import annotations

from postillion.config import parse
from postillion.daemon import delivery_tables


def test_the_queue_process_opens_only_the_userbases():
    config = parse(
        "table creds file:/etc/postillion/creds\n"
        "table domains { example.org }\n"
        "table virtuals { alice@example.org = vmail }\n"
        "table users { vmail = 2000:2000:/var/vmail }\n"
        "listen on 127.0.0.1 auth <creds> insecure-auth\n"
        'action "local" maildir virtual <virtuals> userbase <users>\n'
        'action "system" maildir\n'
        'match from any for domain <domains> action "local"\n'
        'match from local for local action "system"\n', "smtpd.conf")
    assert delivery_tables(config) == {"users"}
