"""AUTH on the submission listener (587: STARTTLS required, AUTH against an
SQLite credentials table, senders restricted), with smtplib and raw dialogue."""

from __future__ import annotations

import base64
import dataclasses
import smtplib
import sqlite3
import threading
import time

import bcrypt
import pytest

from ..sysuser import system_user
from .inproc import PASSWORD, USER, build, secure_uvloop, start, stop  # noqa: F401 (fixture)

BODY = "Subject: submitted\r\n\r\nhello\r\n"


def submission(proc) -> smtplib.SMTP:
    client = smtplib.SMTP(proc.host, proc.ports["submission"], timeout=10)
    client.ehlo("client.example.net")
    client.starttls(context=proc.client_context())
    client.ehlo("client.example.net")
    return client


def test_login_and_send(secure_uvloop):
    proc = secure_uvloop
    with submission(proc) as client:
        assert client.has_extn("auth") and "PLAIN" in client.esmtp_features["auth"]
        client.login(USER, PASSWORD)
        client.ehlo("client.example.net")
        assert not client.has_extn("auth")  # once authenticated, no more AUTH
        assert client.sendmail(f"{USER}@example.test", ["alice@example.test"], BODY) == {}
    [path] = proc.wait_delivered("alice")
    raw = path.read_bytes()
    assert b"with ESMTPSA id" in raw and f"auth=yes user={USER}".encode() in raw
    # An authenticated submission gets the Date: and Message-ID: it lacked.
    head = raw.split(b"\n\n", 1)[0]
    assert b"\nDate: " in head and b"\nMessage-ID: <" in head and b"@mx.example.test>" in head
    log = proc.wait_log("smtp message")
    assert f"smtp authentication user={USER} result=ok" in log
    assert PASSWORD not in log and base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode() not in log


def test_login_mechanism(secure_uvloop):
    proc = secure_uvloop
    with submission(proc) as client:
        client.user, client.password = USER, PASSWORD
        code, _ = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        assert code == 235


def test_auth_required_before_mail(secure_uvloop):
    with submission(secure_uvloop) as client:
        code, text = client.docmd("MAIL FROM:<gilles@example.test>")
        assert (code, text) == (530, b"5.7.0 Authentication required")


def test_wrong_password_then_421(secure_uvloop):
    proc = secure_uvloop
    with submission(proc) as client:
        for password in ("wrong", "bad"):
            token = base64.b64encode(f"\0{USER}\0{password}".encode()).decode()
            assert client.docmd("AUTH", f"PLAIN {token}") == (535, b"5.7.8 Authentication failed")
        code, text = client.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0{USER}\0nope".encode()).decode())
        assert code == 535
        # The third failure is followed by 421 and the close.
        assert client.getreply()[0] == 421
    log = proc.wait_log("reason=\"too many failed authentications\"")
    assert "nope" not in log and "wrong" not in log
    assert 'command="AUTH PLAIN (...)"' in log


def test_authzid_must_be_the_user(secure_uvloop):
    with submission(secure_uvloop) as client:
        token = base64.b64encode(f"root\0{USER}\0{PASSWORD}".encode()).decode()
        assert client.docmd("AUTH", f"PLAIN {token}")[0] == 535
        token = base64.b64encode(f"{USER}\0{USER}\0{PASSWORD}".encode()).decode()
        assert client.docmd("AUTH", f"PLAIN {token}")[0] == 235


def test_auth_replies(secure_uvloop):
    proc = secure_uvloop
    with smtplib.SMTP(proc.host, proc.ports["submission"], timeout=10) as client:
        client.ehlo("client.example.net")
        assert client.docmd("AUTH", "PLAIN AGdpbGxlcwB4")[0] == 538  # before TLS
    with submission(proc) as client:
        assert client.docmd("AUTH", "PLAIN !!!") == (501, b"5.5.2 Invalid base64 data")
        assert client.docmd("AUTH", "LOGIN")[0] == 334
        assert client.docmd("*") == (501, b"5.0.0 Authentication cancelled")
        assert client.docmd("AUTH", "CRAM-MD5")[0] == 504
        client.login(USER, PASSWORD)
        assert client.docmd("AUTH", "PLAIN AGdpbGxlcwB4")[0] == 503
    with smtplib.SMTP(proc.host, proc.ports["plain"], timeout=10) as client:
        client.ehlo("client.example.net")
        assert client.docmd("AUTH", "PLAIN AGdpbGxlcwB4")[0] == 502
        assert client.docmd("STARTTLS")[0] == 502


def test_senders_restrict_mail_from(secure_uvloop):
    proc = secure_uvloop
    with submission(proc) as client:
        client.login(USER, PASSWORD)
        assert client.docmd("MAIL FROM:<alice@example.test>") == (553, b"5.7.1 Sender not allowed")
        assert client.docmd("MAIL FROM:<>")[0] == 553
        assert client.docmd("MAIL FROM:<gilles+tag@example.test>")[0] == 250
        client.rset()
        assert client.docmd("MAIL FROM:<anyone@example.org>")[0] == 250


def test_credentials_table_down_is_454(secure_uvloop):
    proc = secure_uvloop
    db = sqlite3.connect(proc.fixture.root / "tables.sqlite")
    db.execute("DROP TABLE credentials")
    db.commit()
    db.close()
    with submission(proc) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            client.login(USER, PASSWORD)
        assert info.value.smtp_code == 454 and info.value.smtp_error.startswith(b"4.7.0")
    proc.wait_log("result=tempfail")


def test_authenticated_session_flags_the_envelope(secure_uvloop):
    """AUTH user, TLS and DSN parameters are kept on the queued envelope."""
    proc = secure_uvloop
    committed = []
    store = proc.daemon.store
    schedule = store.on_commit
    store.on_commit = lambda env: (committed.append(env), schedule(env))
    with submission(proc) as client:
        client.login(USER, PASSWORD)
        assert client.sendmail(f"{USER}@example.test", ["bob@example.test"], BODY,
                               rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;bob+40example.test"],
                               mail_options=["RET=HDRS", "ENVID=abc+2Bdef"]) == {}
    proc.wait_delivered("bob")
    [env] = committed
    assert env.flags == {"authenticated", "tls"} and env.username == USER
    assert env.dsn_notify == {"SUCCESS", "FAILURE"} and env.dsn_ret == "HDRS"
    assert env.dsn_envid == "abc+def" and env.dsn_orcpt == "rfc822;bob@example.test"
    assert "proto=ESMTPSA" in proc.wait_log("smtp message")


def test_auth_name_with_control_bytes_never_injects(secure_uvloop):
    proc = secure_uvloop
    with submission(proc) as client:
        token = base64.b64encode(b"\0gil\r\nInjected: yes\0pw").decode()
        assert client.docmd("AUTH", f"PLAIN {token}")[0] == 535
    log = proc.wait_log("result=permfail")
    assert not any(line.startswith("Injected") for line in log.splitlines())
    assert 'user="gil\\x0d\\x0aInjected: yes"' in log


def test_masquerade_rewrites_from(secure_uvloop):
    """senders <t> masquerade: the From: address becomes the MAIL FROM."""
    proc = secure_uvloop
    body = ("From: Gilles\r\n <someone.else@example.net>\r\nSubject: m\r\n\r\n"
            "From: in the body stays\r\n")
    with submission(proc) as client:
        client.login(USER, PASSWORD)
        assert client.sendmail(f"{USER}@example.test", ["alice@example.test"], body) == {}
    [path] = proc.wait_delivered("alice")
    raw = path.read_bytes()
    assert b"\nFrom: Gilles <gilles@example.test>\n" in raw
    assert b"someone.else" not in raw and b"\nFrom: in the body stays\n" in raw
    assert b"\nSubject: m\n" in raw


def use_authenticator(proc, authenticator) -> None:
    """The SMTPS listener checks AUTH with `authenticator` from now on."""
    for listener in proc.daemon.listeners:
        if listener.decl.smtps:
            listener.ctx = dataclasses.replace(listener.ctx, authenticator=authenticator)


def test_system_accounts_when_auth_has_no_table(secure_uvloop, tmp_path):
    """`auth` without a table checks shadow(5) (here a test copy of it)."""
    from postillion.lookup.auth import Authenticator, sha_crypt
    proc = secure_uvloop
    shadow = tmp_path / "shadow"
    shadow.write_text(f"root:*:19000::::::\nmarc:{sha_crypt(b'unix pw', '$6$saltsalt')}:19000::::::\n")
    use_authenticator(proc, Authenticator(None, proc.daemon.authenticators.pool, shadow_path=shadow))
    ctx = proc.client_context()
    with smtplib.SMTP_SSL(proc.host, proc.ports["smtps"], timeout=10, context=ctx) as client:
        client.ehlo("client.example.net")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("root", "anything")
    with smtplib.SMTP_SSL(proc.host, proc.ports["smtps"], timeout=10, context=ctx) as client:
        client.ehlo("client.example.net")
        assert client.login("marc", "unix pw")[0] == 235


def smtps(proc) -> smtplib.SMTP_SSL:
    client = smtplib.SMTP_SSL(proc.host, proc.ports["smtps"], timeout=30, context=proc.client_context())
    client.ehlo("client.example.net")
    return client


def plain_token(user: str, password: str) -> str:
    return "PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def test_a_real_system_account_made_by_useradd(secure_uvloop):
    """`auth` with no table: an account made by useradd, its password set by
    chpasswd through PAM (yescrypt on Debian 12, refused before libcrypt
    checked system hashes), over real SMTP AUTH."""
    proc = secure_uvloop
    use_authenticator(proc, proc.daemon.authenticators.get(None))
    password = "yes crypt pw"
    with system_user(password) as user:
        with open("/etc/shadow") as f:
            assert any(line.startswith(f"{user}:$y$") for line in f)
        with smtps(proc) as client:
            with pytest.raises(smtplib.SMTPAuthenticationError) as info:
                client.login(user, "not it")
            assert info.value.smtp_code == 535
        with smtps(proc) as client:
            assert client.login(user, password)[0] == 235
    log = proc.wait_log(f"smtp authentication user={user} result=ok")
    assert password not in log and "$y$" not in log


def test_a_hash_asking_too_much_work_is_454(secure_uvloop):
    """bcrypt cost 15 (above auth-max-bcrypt-cost 14) in the SQLite table: a
    malformed value, 454 4.7.0 at once, the user and table in the log and
    never the hash.  (Unbounded, the check would take seconds and say 535.)"""
    proc = secure_uvloop
    heavy = bcrypt.gensalt(4).decode().replace("$04$", "$15$") + "H" * 31
    db = sqlite3.connect(proc.fixture.root / "tables.sqlite")
    db.execute("INSERT INTO credentials VALUES (?, ?)", ("heavy", heavy))
    db.commit()
    db.close()
    with submission(proc) as client:
        assert client.docmd("AUTH", plain_token("heavy", "pw")) == \
            (454, b"4.7.0 Temporary authentication failure")
        client.login(USER, PASSWORD)  # 454 counted no failure; the session goes on
    log = proc.wait_log("smtp authentication user=heavy result=tempfail")
    assert ('auth: user "heavy" in table creds has a malformed secret: '
            "bcrypt cost 15 above auth-max-bcrypt-cost 14") in log
    assert heavy[7:29] not in log and "HHHH" not in log


def test_an_auth_flood_never_delays_a_commit(daemon, tmp_path):
    """With the auth pool saturated by checks that do not finish (2 threads
    busy, 1 check waiting), one more AUTH is told 454 4.7.0 at once, and a
    message on port 25 is committed and acknowledged while those checks are
    still blocked: the queue's flush has threads of its own."""
    proc, config = build(daemon, tmp_path)
    limits = dataclasses.replace(config.limits, auth_threads=2, auth_max_waiting=1)
    start(proc, dataclasses.replace(config, limits=limits))
    release = threading.Event()
    running: list[str] = []
    replies: dict[int, tuple[int, bytes]] = {}
    clients: list[threading.Thread] = []
    try:
        [checker] = {id(l.ctx.authenticator): l.ctx.authenticator
                     for l in proc.daemon.listeners if l.decl.smtps}.values()
        real = checker.verify

        def blocked(password: str, stored: str) -> bool:
            running.append(password)
            assert release.wait(30)
            return real(password, stored)

        checker.verify = blocked

        def login(i: int) -> None:
            with smtps(proc) as client:
                replies[i] = client.docmd("AUTH", plain_token(USER, PASSWORD))

        clients = [threading.Thread(target=login, args=(i,)) for i in range(3)]
        for thread in clients:
            thread.start()
        deadline = time.monotonic() + 10
        while not (len(running) == 2 and checker.pool.in_flight == 3):
            assert time.monotonic() < deadline, (running, checker.pool.in_flight)
            time.sleep(0.01)
        with smtps(proc) as client:
            assert client.docmd("AUTH", plain_token(USER, PASSWORD)) == \
                (454, b"4.7.0 Temporary authentication failure")
        batches = proc.daemon.store.batches
        with smtplib.SMTP(proc.host, proc.ports["mx"], timeout=10) as client:
            assert client.sendmail("someone@example.net", ["alice@example.test"], BODY) == {}
        assert proc.daemon.store.batches > batches
        # Acknowledged while every auth thread is still blocked.
        assert not release.is_set() and len(running) == 2 and not replies
        assert checker.pool.in_flight == 3
    finally:
        release.set()
        for thread in clients:
            thread.join(30)
        stop(proc)
    assert replies == {i: (235, b"2.0.0 Authentication succeeded") for i in range(3)}
    assert "auth pool full (auth-threads 2 busy, auth-max-waiting 1 waiting)" in proc.log()


MESSAGE = b"Subject: split\r\n\r\nbody\r\n"


@pytest.mark.parametrize("cut", range(13, 20))
def test_bdat_chunk_splitting_the_header_end_still_gets_date(secure_uvloop, cut):
    """Wherever a BDAT chunk boundary cuts the CRLF CRLF ending the header
    (even between a CR and its LF), the missing Date:/Message-ID: go in the
    header, and nowhere else."""
    proc = secure_uvloop
    with submission(proc) as client:
        client.login(USER, PASSWORD)
        client.ehlo("client.example.net")
        assert client.mail(f"{USER}@example.test")[0] == 250
        assert client.rcpt("alice@example.test")[0] == 250
        part1, part2 = MESSAGE[:cut], MESSAGE[cut:]
        client.send(b"BDAT %d\r\n" % len(part1) + part1)
        assert client.getreply()[0] == 250
        client.send(b"BDAT %d LAST\r\n" % len(part2) + part2)
        assert client.getreply()[0] == 250
    [path] = proc.wait_delivered("alice")
    head, body = path.read_bytes().split(b"\n\n", 1)
    assert b"\nSubject: split" in head
    assert b"\nDate: " in head and b"\nMessage-ID: <" in head
    assert body == b"body\n"


def test_non_ascii_auth_responses_refused(secure_uvloop):
    """Bytes that are not ASCII in an AUTH response, initial or continued,
    get 501 5.5.2 and the session goes on; a user name that is not UTF-8
    is checked like any other."""
    proc = secure_uvloop
    with submission(proc) as client:
        client.send(b"AUTH PLAIN A\xcc\xbcsaWNl\r\n")
        assert client.getreply() == (501, b"5.5.2 Invalid base64 data")
        client.send(b"AUTH LOGIN\r\n\xff\xfe\r\n")
        assert client.getreply()[0] == 334
        assert client.getreply() == (501, b"5.5.2 Invalid base64 data")
        client.send(b"AUTH PLAIN " + base64.b64encode(b"\0gill\xffes\0" + PASSWORD.encode()) + b"\r\n")
        assert client.getreply() == (535, b"5.7.8 Authentication failed")
        client.login(USER, PASSWORD)
    log = proc.wait_log(f"user={USER} result=ok")
    assert "session crashed" not in log and 'command="AUTH PLAIN (...)"' in log
    assert 'user="gill\\xffes" result=permfail' in log  # escaped: the line encodes
