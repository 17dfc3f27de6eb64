"""TLS server contexts for listeners, from `pki` and `ca` (docs/configuration.md).

A listener with `tls`, `tls-require` or `smtps` presents the certificate of
its `pki` names (default: the listener's hostname).  With several `pki`
names the first is the default and a client's SNI picks another by name:
the server name equals the pki name, or matches it as `*.domain` (one
label), case-blind.  *Choice:* OpenSMTPD names pkis after the host names
they serve; matching on the name avoids parsing certificates.

Every context: TLS >= 1.2, `smtp ciphers` (default `HIGH:!aNULL:!MD5`) for
TLS 1.2 (TLS 1.3 suites are OpenSSL's), server cipher preference, no
compression.  `verify` (after
`tls-require` or `smtps`) demands a client certificate valid for the
listener's `ca`; without `verify` a `ca` only lets a presented certificate
be checked (the `Received:` header then says YES/FAIL/NO).

Errors building a context (missing file, key not matching the cert) raise
TlsConfigError, which the daemon reports at startup: a listener never runs
without the certificate it was told to present.
"""

from __future__ import annotations

import ssl
from typing import Mapping, Sequence

from postillion.config.model import CaDecl, ListenDecl, PkiDecl

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class TlsConfigError(Exception):
    """A listener's pki/ca cannot be loaded; the message names the pki and file."""


def uses_tls(decl: ListenDecl) -> bool:
    return decl.tls or decl.tls_require or decl.smtps


def _context(pki: PkiDecl, ca: CaDecl | None, verify: bool, ciphers: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MINIMUM_VERSION
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.set_ciphers(ciphers)
    except ssl.SSLError:
        raise TlsConfigError(f"smtp ciphers {ciphers!r}: no cipher matches") from None
    if not pki.cert or not pki.key:
        raise TlsConfigError(f"pki {pki.name}: needs both cert and key")
    try:
        ctx.load_cert_chain(pki.cert, pki.key)
    except (OSError, ssl.SSLError) as e:
        raise TlsConfigError(f"pki {pki.name}: cannot load {pki.cert} / {pki.key}: "
                             f"{getattr(e, 'strerror', None) or e}") from None
    if ca is not None:
        try:
            ctx.load_verify_locations(cafile=ca.cert)
        except (OSError, ssl.SSLError) as e:
            raise TlsConfigError(f"ca {ca.name}: cannot load {ca.cert}: "
                                 f"{getattr(e, 'strerror', None) or e}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_OPTIONAL
    elif verify:
        raise TlsConfigError("verify needs a ca to check client certificates against")
    return ctx


def _name_matches(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        head, dot, tail = name.partition(".")
        return bool(head) and bool(dot) and tail == pattern[2:]
    return pattern == name


def server_context(decl: ListenDecl, hostname: str, pkis: Mapping[str, PkiDecl],
                   cas: Mapping[str, CaDecl], ciphers: str) -> ssl.SSLContext | None:
    """The SSLContext for one listener, or None if it does not use TLS.

    SNI: the first pki's context answers; its callback switches the
    connection to another pki's context when the client asked for that name.
    """
    if not uses_tls(decl):
        return None
    names: Sequence[str] = decl.pki or (hostname,)
    ca = None
    if decl.ca is not None:
        ca = cas.get(decl.ca)
        if ca is None:
            raise TlsConfigError(f"no ca named {decl.ca}")
    contexts: list[tuple[str, ssl.SSLContext]] = []
    for name in names:
        pki = pkis.get(name)
        if pki is None:
            raise TlsConfigError(f"listener on {decl.address} needs a pki named {name} "
                                 f"(pki {name} cert FILE / pki {name} key FILE)")
        contexts.append((name, _context(pki, ca, decl.verify, ciphers)))
    default = contexts[0][1]
    if len(contexts) > 1:
        def select(sock: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
            if server_name:
                for name, ctx in contexts:
                    if _name_matches(name, server_name):
                        sock.context = ctx
                        return
        for _, ctx in contexts:
            ctx.sni_callback = select
    return default


def describe(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> tuple[str, str] | None:
    """(`TLSv1.3:TLS_AES_256_GCM_SHA384:256`, `YES|FAIL|NO`) for the Received
    header and the `smtp tls` log line, or None without TLS.

    A handshake that completed with a peer certificate passed verification
    (OpenSSL refuses a bad one under CERT_OPTIONAL/REQUIRED): YES; none: NO.
    """
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    version = ssl_object.version() or "TLS"
    name, bits = (cipher[0], cipher[2]) if cipher else ("unknown", 0)
    try:
        cert = ssl_object.getpeercert()
    except ValueError:
        cert = None
    return f"{version}:{name}:{bits}", "YES" if cert else "NO"
