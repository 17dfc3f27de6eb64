"""Which parsed options the runtime implements: refuse the rest, never ignore them.

The config layer parses the whole grammar (docs/configuration.md), but the daemon grows
one feature at a time.  A config that asks for something not built yet
(`listen ... tls` before TLS exists, `action ... relay` before the MTA) must
not start and silently do less than the administrator wrote: the daemon
refuses, naming `file:line:column` and the option; `postillion check`
accepts the config (its syntax and references are fine) and warns.

Feature names are the manual's words, as the parser records them:
"listen tls", "action mbox", "action ttl", "match from rdns", "match regex",
"match !", "smtp ciphers", "queue ttl", "table <getpwnam>".  When a part of
the runtime lands, add its names to IMPLEMENTED (one line) in the same
commit.
"""

from __future__ import annotations

from typing import AbstractSet

from postillion.config.model import Config, Position

IMPLEMENTED: frozenset[str] = frozenset({
    # listeners (smtp/server.py)
    "listen on", "listen port", "listen hostname",
    # local delivery (mda/, lookup/expand.py, lookup/forward.py; mta/lmtp.py)
    "action maildir", "action alias", "action virtual", "action userbase",
    "action mbox", "action mda", "action forward-only", "action expand-only",
    "action user", "action wrapper", "mda limit", "mda wrapper",
    "action lmtp", "action rcpt-to", "action junk",
    # rules (rules.py)
    "match from local", "match from any", "match from src",
    "match for local", "match for any", "match for domain", "match !",
    # globals (smtp/, lookup/)
    "hostname", "smtp max-message-size", "smtp sub-addr-delim",
    "smtp limit max-rcpt", "smtp limit max-mails",
    "smtp limit max-sessions", "smtp limit max-sessions-per-ip",
    "queue min-free", "queue ttl", "action ttl",
    # bounces (daemon/bounces.py, queue/bounce.py)
    "bounce warn-interval",
    # relaying (mta/): relay actions and their options, `pki` (a client
    # certificate) included, the mta limits and our resolver option
    "action relay", "action host", "action domain", "action backup", "action tls",
    "action auth", "action helo", "action helo-src", "action src", "action mail-from",
    "action ca", "action pki", "mta limit", "mta nameserver",
    # processes (the supervisor: how many smtp processes, which user they run as)
    "smtp workers", "queue user",
    # the Prometheus endpoint (daemon/parent.py binds it, daemon/exporter.py answers)
    "metrics",
    # TLS, AUTH and listener options (smtp/, tls.py, lookup/auth.py)
    "pki", "ca", "smtp ciphers", "listen tls", "listen tls-require", "listen smtps", "listen verify",
    "listen pki", "listen ca", "listen auth", "listen auth-optional", "listen insecure-auth",
    "listen senders", "listen no-dsn", "listen received-auth", "listen mask-src", "listen tag",
    "match auth", "match from auth", "match tls", "listen masquerade", "listen hostnames",
    "listen inet4", "listen inet6",
})


def unsupported(config: Config,
                implemented: AbstractSet[str] = IMPLEMENTED) -> list[tuple[Position, str]]:
    """Every option of `config` not in `implemented`, as (position, message), in order.

    One entry per place the option is written, so the administrator sees
    each line to change.
    """
    out = []
    for feature in config.features:
        if feature.name not in implemented:
            out.append((feature.pos, f'"{feature.name}" is not implemented by the runtime yet'))
    return sorted(dict.fromkeys(out), key=lambda e: (e[0].file != config.path, e[0]))


def refusal(config: Config, implemented: AbstractSet[str] = IMPLEMENTED) -> str | None:
    """The daemon's reason to refuse to start on `config`, or None if all is implemented."""
    problems = unsupported(config, implemented)
    if not problems:
        return None
    lines = [f"{pos}: {message}" for pos, message in problems]
    return "refusing to start: the configuration uses options not implemented yet\n" + \
        "\n".join(lines)
