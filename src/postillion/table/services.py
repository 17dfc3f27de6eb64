"""The services a table can answer: what a lookup is *for*.

One table may serve several services (a single SQLite backend-config can hold
`query_domain`, `query_alias` and `query_userinfo`); the service tells the
backend which query to run and tells `table/values.py` which parser turns the
backend's raw string into a typed value (docs/tables.md).  Values are the names
written in config, logs and the `proc` protocol.
"""

from __future__ import annotations

import enum


class Service(enum.Enum):
    """One table service (docs/tables.md); the value is its config/log name."""

    ALIAS = "alias"              # alias/virtual: key -> comma list of targets
    DOMAIN = "domain"            # `for domain`, helo: domain names, `*` in lists
    CREDENTIALS = "credentials"  # listener/relay auth: `user:secret` or `secret`
    NETADDR = "netaddr"          # `from src`: addresses, CIDR networks, `local`
    USERINFO = "userinfo"        # userbase: `uid:gid:home` (2012: `user:uid:gid:home`)
    SOURCE = "source"            # relay `src`: IP literals, fetched cyclically
    MAILADDR = "mailaddr"        # mail-from/rcpt-to: `user`, `@dom`, `user@dom`, `@`
    ADDRNAME = "addrname"        # helo-src/hostnames: local IP -> host name
    MAILADDRMAP = "mailaddrmap"  # senders: auth user -> comma list of mailaddr
    RELAYHOST = "relayhost"      # relay domain/host: relay URL
    STRING = "string"            # tag, auth: plain strings
    REGEX = "regex"              # `regex <t>`: Python `re`, full match
    AUTH = "auth"                # listener auth: check `user:cleartext` only

    def __str__(self) -> str:
        return self.value
