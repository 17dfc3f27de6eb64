"""A listener never runs without the protection it was configured with:
a pki that does not load, or a table unfit for auth/senders, stops startup."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import trustme

from postillion.config import parse
from postillion.daemon import Daemon, StartupError


def start(text: str, tmp_path: Path) -> str:
    config = parse(text, str(tmp_path / "smtpd.conf"))
    with pytest.raises(StartupError) as info:
        asyncio.run(Daemon(config, tmp_path / "spool").start())
    return str(info.value)


def test_missing_pki_file(tmp_path):
    message = start(f"pki mx.test cert {tmp_path}/none.crt\npki mx.test key {tmp_path}/none.key\n"
                    "listen on 127.0.0.1 port 1 hostname mx.test tls\n", tmp_path)
    assert "pki mx.test: cannot load" in message


def test_key_not_matching_cert(tmp_path):
    ca = trustme.CA()
    one, two = ca.issue_cert("mx.test"), ca.issue_cert("mx.test")
    one.cert_chain_pems[0].write_to_path(str(tmp_path / "c"))
    two.private_key_pem.write_to_path(str(tmp_path / "k"))
    message = start(f"pki mx.test cert {tmp_path}/c\npki mx.test key {tmp_path}/k\n"
                    "listen on 127.0.0.1 port 1 hostname mx.test smtps\n", tmp_path)
    assert "pki mx.test" in message


def test_sni_picks_the_pki_by_name(tmp_path):
    """Two pki on one listener: the client's server name chooses."""
    import socket
    import ssl
    import threading

    from postillion.config.model import ListenDecl, PkiDecl, Position
    from postillion.tls import server_context

    ca = trustme.CA()
    pkis = {}
    for name in ("mx.one.test", "mx.two.test"):
        cert = ca.issue_cert(name)
        cert.cert_chain_pems[0].write_to_path(str(tmp_path / f"{name}.crt"))
        cert.private_key_pem.write_to_path(str(tmp_path / f"{name}.key"))
        pkis[name] = PkiDecl(name, Position("t", 1, 1), cert=str(tmp_path / f"{name}.crt"),
                             key=str(tmp_path / f"{name}.key"))
    decl = ListenDecl("127.0.0.1", Position("t", 1, 1), smtps=True, pki=tuple(pkis))
    server = server_context(decl, "mx.one.test", pkis, {}, "HIGH:!aNULL:!MD5")
    for wanted in ("mx.two.test", "mx.one.test"):
        a, b = socket.socketpair()
        client = ssl.create_default_context()
        ca.configure_trust(client)
        t = threading.Thread(target=lambda: server.wrap_socket(a, server_side=True).close())
        t.start()
        with client.wrap_socket(b, server_hostname=wanted) as tls:
            names = [v for k, v in tls.getpeercert()["subjectAltName"]]
        t.join()
        a.close()
        assert names == [wanted]
