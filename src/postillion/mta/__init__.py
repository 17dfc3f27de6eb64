"""The MTA: mail that leaves the host, relayed to other servers over SMTP.

`dns` finds where a domain's mail goes (MX, then A/AAAA, in parallel,
TTL-cached); routes, relays and the SMTP client session build on it
(docs/architecture.md, The MTA).  Like `mda`, this package imports `table`,
`queue.envelope`, `config.model` and the leaves, never `smtp`.
"""
