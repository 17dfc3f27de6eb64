"""The relay: where a set of envelopes goes and how, the key sessions are shared by.

A relay is the destination domain (or a smarthost), the TLS mode, port,
AUTH label, source table, HELO, pki/ca and backup name (docs/architecture.md,
The MTA: relays, hosts, routes).  Envelopes with equal relays share
sessions, limits and routes, so `Relay` is a frozen, hashable value built
from the envelope's `relay` action and its recipient domain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from postillion.config.model import ActionDecl, RelayHost
from postillion.errors import Reply, TempFail

TLS_REQUIRED: Final = Reply(451, "4.7.0", "TLS required for relaying")
NO_AUTH_TABLE: Final = Reply(451, "4.7.0", "No auth table for relaying")
NO_AUTH_LABEL: Final = Reply(451, "4.7.0", "No auth label for relaying")


@dataclass(frozen=True, slots=True)
class Relay:
    """Where envelopes go and how; equal relays share sessions, limits and routes.

    `domain` is the recipient domain (MX lookup), or the smarthost's host
    when `as_host` (A/AAAA lookup, or an address literal such as
    `[192.0.2.1]`).  `scheme` is the relay URL's modern scheme
    (docs/configuration.md, Relay URLs): "smtp" (STARTTLS if offered),
    "smtp+tls", "smtp+notls", "smtps", "ssl" or "lmtp"; `verify` says the
    peer's certificate must be valid.  `auth` names the credentials table,
    `label` its key; `src` the source table, `helo_src` the addrname table
    giving a HELO per source; `backup` is the host name whose own MX
    preference bounds the MXs used (only strictly better ones).
    """

    domain: str
    as_host: bool = False
    scheme: str = "smtp"
    port: int | None = None
    verify: bool = False
    auth: str | None = None
    label: str | None = None
    src: str | None = None
    helo: str | None = None
    helo_src: str | None = None
    pki: str | None = None
    ca: str | None = None
    backup: str | None = None

    @property
    def effective_port(self) -> int | None:
        if self.port is not None:
            return self.port
        return {"smtps": 465, "lmtp": None}.get(self.scheme, 25)

    def __str__(self) -> str:
        """The relay as the log names it: the domain, or the smarthost's URL."""
        if not self.as_host:
            return self.domain
        label = f"{self.label}@" if self.label else ""
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme}://{label}{self.domain}{port}"


def relay_for(action: ActionDecl, domain: str, *, relayhost: RelayHost | None = None,
              hostname: str | None = None) -> Relay:
    """The relay an envelope for `domain` takes under `action` (a `relay` action).

    `relayhost` is the smarthost when the action has `host <table>` or
    `domain <table>`: the caller fetched it for this envelope; an action
    with `host URL` needs none.  `hostname` is ours, the default backup name
    of `backup` without `mx NAME`.  The action's `tls` makes an `smtp://`
    relay require STARTTLS; `no-verify` accepts any certificate.  Raises
    TempFail (451 4.7.0) for a fetched smarthost the action cannot use
    (`smtp+notls://` under `tls`, a label without `auth <t>`, no label
    under `auth <t>`: the checks the parser makes on `host URL`), so its
    envelopes wait for the table to be fixed; ValueError for a call that makes no
    sense (not a relay action, a table without its fetched value).
    """
    if action.method != "relay":
        raise ValueError(f"action {action.name!r} does not relay")
    host = action.host or relayhost
    if host is None and (action.host_table or action.domain):
        raise ValueError(f"action {action.name!r} needs the smarthost fetched from its table")
    scheme = host.scheme if host else "smtp"
    if action.tls:
        if scheme == "smtp+notls":
            raise TempFail(TLS_REQUIRED, f"action {action.name!r} requires TLS, "
                                         f"relay {host.url() if host else ''} refuses it")
        if scheme == "smtp":
            scheme = "smtp+tls"
    label = host.label if host else None
    if label and not action.auth:
        raise TempFail(NO_AUTH_TABLE, f"relay label {label!r} but action {action.name!r} "
                                      f"has no auth table")
    if action.auth and not label:
        raise TempFail(NO_AUTH_LABEL, f"action {action.name!r} authenticates but relay "
                                      f"{host.url() if host else domain} has no label")
    backup = None
    if host is None and action.backup:
        backup = action.backup_mx or hostname
        if not backup:
            raise ValueError("backup without mx name needs our hostname")
    tls_mandatory = scheme in ("smtp+tls", "smtps", "ssl")
    target = host.host if host else domain.rstrip(".")
    return Relay(
        domain=target if target.startswith("[") else target.lower(),
        as_host=host is not None,
        scheme=scheme,
        port=host.port if host else None,
        verify=tls_mandatory and not action.no_verify,
        auth=action.auth if label else None,
        label=label,
        src=action.src,
        helo=action.helo,
        helo_src=action.helo_src,
        pki=action.pki,
        ca=action.ca,
        backup=backup.lower() if backup else None,
    )
