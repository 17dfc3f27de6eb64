"""The table API: every lookup Postillion makes goes through a `Table`.

Domains, aliases, virtual users, credentials, source addresses, HELO names
can live in an inline list, a text file, a compiled map (`db:`, built by
`postillion makemap`), SQLite (and later PostgreSQL, MySQL, Redis, LDAP,
socketmap or a helper process), and the rest
of the daemon cannot tell: it asks `Table.lookup / check / fetch` for a
`Service` and gets a typed value, "not found", or `LookupUnavailable`.

Layout: `services` (what a lookup is for), `values` (typed values and one
parser per service), `match` (list matching), `backend` (the
contract), `textformat` and `backend_config` (the text files of docs/tables.md),
`sqlshape` (SQL rows to values), `dbfile` (the makemap file format:
build, sniff, open), `worker` (one thread per SQLite table), `registry`
(the backends by name), `table` (the `Table` and `open_table`), and
`backends/`, one module each.
This package imports nothing of ours but `postillion.errors`.
"""

from postillion.table.backend import Backend, Shape
from postillion.table.errors import BackendError, MalformedValue, TableError
from postillion.table.registry import ALIASES, BACKEND_NAMES
from postillion.table.services import Service
from postillion.table.table import LOOKUP_TIMEOUT, Table, open_table
from postillion.table.values import (
    Addrname, Credentials, Domain, ExpandList, Mailaddr, Mailaddrmap, Netaddr, Regex,
    Relayhost, Source, String, Userinfo, Value, parse_value,
)

__all__ = [
    "ALIASES", "BACKEND_NAMES", "LOOKUP_TIMEOUT",
    "Addrname", "Backend", "BackendError", "Credentials", "Domain", "ExpandList",
    "MalformedValue", "Mailaddr", "Mailaddrmap", "Netaddr", "Regex", "Relayhost",
    "Service", "Shape", "Source", "String", "Table", "TableError", "Userinfo", "Value",
    "open_table", "parse_value",
]
