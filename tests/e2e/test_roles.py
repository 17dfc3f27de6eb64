"""The process family: a root parent that reads no mail, smtp processes and
a queue process as the unprivileged queue user, dying with the parent,
restarted when they die, and every acknowledged message delivered."""

from __future__ import annotations

import os
import pwd
import smtplib
import socket
import threading
import time

import pytest

from tests.e2e import procs

QUEUE_USER = "_postillion"


def two_workers(daemon) -> None:
    daemon.config.write_text("smtp workers 2\n" + daemon.config.read_text())


def send_one(d, i: int) -> bool:
    """One message on its own connection; True once it got its 250."""
    try:
        with smtplib.SMTP(d.host, d.port, timeout=10) as client:
            client.sendmail("bob@example.test", ["alice@example.test"],
                            f"Subject: {i}\r\n\r\nbody {i}\r\n".encode())
        return True
    except (smtplib.SMTPException, OSError):
        return False


@pytest.fixture
def as_root():
    assert os.geteuid() == 0, "these tests check privilege separation: run them as root (CI does)"
    pwd.getpwnam(QUEUE_USER)   # make test creates it (Makefile: system-user)


def test_no_process_holding_a_client_runs_as_root(daemon, as_root):
    two_workers(daemon)
    daemon.start()
    clients = [socket.create_connection((daemon.host, daemon.port), timeout=10) for _ in range(6)]
    try:
        for c in clients:
            assert c.recv(512).startswith(b"220")
        holders = procs.holders(daemon.proc.pid, daemon.port)
        assert sum(holders.values()) == len(clients)
        queue_uid = pwd.getpwnam(QUEUE_USER).pw_uid
        for pid in holders:
            st = procs.status(pid)
            assert st["Uid"].split() == [str(queue_uid)] * 4, (pid, st["Uid"])
            assert st["CapEff"] == "0000000000000000" and st["Groups"] == ""
        # The parent holds listening sockets, never a client.
        assert daemon.proc.pid not in holders
        assert set(procs.roles(daemon.proc.pid, "smtp")) >= set(holders)
    finally:
        for c in clients:
            c.close()


def test_the_smtp_role_cannot_read_shadow_nor_write_outside_the_spool(daemon, as_root):
    daemon.start()
    [smtp, *_] = procs.roles(daemon.proc.pid, "smtp")
    st = procs.status(smtp)
    uid, gid = int(st["Uid"].split()[0]), int(st["Gid"].split()[0])
    assert uid != 0 and gid != 0
    attempts = [
        (False, lambda: open("/etc/shadow")),
        (False, lambda: open("/etc/postillion-probe", "w")),
        (False, lambda: open(daemon.mail / "alice" / "x", "w")),
        (False, lambda: open(daemon.root / "tables.sqlite", "a")),
        (True, lambda: open(daemon.spool / "queue" / "probe", "w")),
    ]
    # A child with the smtp process's credentials (its uid and gid, no
    # groups) tries each: the interpreter's own files may be out of its
    # reach, so fork rather than exec.
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            for bit, (allowed, attempt) in enumerate(attempts):
                try:
                    attempt().close()
                    ok = True
                except PermissionError:
                    ok = False
                if ok != allowed:
                    code |= 1 << bit
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"attempts that went wrong: {status >> 8:b}"


def test_two_smtp_processes_both_serve(daemon):
    two_workers(daemon)
    daemon.start()
    smtp = procs.roles(daemon.proc.pid, "smtp")
    assert len(smtp) == 2
    clients = []
    try:
        deadline = time.monotonic() + 20
        while True:
            c = socket.create_connection((daemon.host, daemon.port), timeout=10)
            assert c.recv(512).startswith(b"220")
            clients.append(c)
            held = procs.holders(daemon.proc.pid, daemon.port)
            if len(held) == 2:
                break
            assert len(clients) < 200 and time.monotonic() < deadline, held
    finally:
        for c in clients:
            c.close()
    assert set(held) == set(smtp)


def test_kill_one_smtp_process_under_load(daemon, as_root):
    two_workers(daemon)
    daemon.start()
    [victim, survivor] = procs.roles(daemon.proc.pid, "smtp")
    acked, banners, stop = [], [], threading.Event()

    def load(worker: int) -> None:
        i = 0
        while not stop.is_set() and i < 200:
            started = time.monotonic()
            try:
                with socket.create_connection((daemon.host, daemon.port), timeout=10) as c:
                    greeting = c.recv(512)
                    banners.append((time.monotonic() - started, greeting[:3]))
            except OSError:
                pass
            if send_one(daemon, worker * 1000 + i):
                acked.append(worker * 1000 + i)
            i += 1

    threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    procs.kill(victim)
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert victim not in procs.roles(daemon.proc.pid, "smtp")
    deadline = time.monotonic() + 15
    while len(procs.roles(daemon.proc.pid, "smtp")) < 2:      # restarted, after its back-off
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.1)
    assert survivor in procs.roles(daemon.proc.pid, "smtp")
    assert "restarting it in" in daemon.log()
    # No client waited for a banner: each was greeted quickly, or -- the few
    # the killed process had just accepted -- closed at once.
    slow = [b for b in banners if b[0] > 1.0 or b[1] not in (b"220", b"")]
    assert not slow, slow[:5]
    assert len([b for b in banners if b[1] == b""]) <= 4      # at most one per load thread
    assert len(acked) > 20
    assert len(daemon.wait_delivered("alice", len(acked), timeout=60)) >= len(acked)


def test_kill_the_parent_and_every_role_dies_then_a_restart_delivers(daemon):
    daemon.start("-P", "mda")
    for i in range(5):
        assert send_one(daemon, i)
    family = procs.children(daemon.proc.pid)
    assert len(procs.roles(daemon.proc.pid, "queue")) == 1 and family
    daemon.kill()                                   # kill -9 of the parent alone
    assert procs.wait_gone(family, 1.0) == []
    assert daemon.delivered("alice") == []
    daemon.start()
    assert len(daemon.wait_delivered("alice", 5)) == 5


def test_system_passwords_are_checked_by_the_parent(daemon, as_root):
    """`auth` without a table: the smtp process, as _postillion, cannot read
    /etc/shadow; it asks the parent, over its channel."""
    import base64

    from tests.sysuser import system_user
    text = daemon.config.read_text()
    daemon.config.write_text(text.replace(f"port {daemon.port} ",
                                          f"port {daemon.port} auth-optional insecure-auth "))
    daemon.start()
    password = "through the parent"
    with system_user(password) as user:
        for secret, code in ((password, 235), ("wrong", 535)):
            with smtplib.SMTP(daemon.host, daemon.port, timeout=20) as client:
                client.ehlo("client.example.net")
                token = base64.b64encode(f"\0{user}\0{secret}".encode()).decode()
                assert client.docmd("AUTH", f"PLAIN {token}")[0] == code
    log = daemon.wait_log(f"smtp authentication user={user} result=ok")
    assert password not in log


def test_session_limits_count_across_every_smtp_process(daemon):
    """max-sessions-per-ip is one count for the daemon, not one per smtp
    process: the parent keeps it (Postfix's anvil), and forgets the
    sessions of a process that dies."""
    daemon.config.write_text("smtp workers 2\nsmtp limit max-sessions-per-ip 4\n"
                             + daemon.config.read_text())
    daemon.start()

    def connect() -> tuple[socket.socket, bytes]:
        c = socket.create_connection((daemon.host, daemon.port), timeout=10)
        return c, c.recv(512)

    held = []
    try:
        for _ in range(4):
            c, greeting = connect()
            assert greeting.startswith(b"220"), greeting
            held.append(c)
        c, greeting = connect()
        c.close()
        assert greeting.startswith(b"421 4.7.0"), greeting
        held.pop().close()
        time.sleep(0.3)
        c, greeting = connect()
        assert greeting.startswith(b"220"), greeting
        held.append(c)
        # A process that dies gives its sessions back.
        holders = procs.holders(daemon.proc.pid, daemon.port)
        victim = max(holders, key=holders.get)
        procs.kill(victim)
        time.sleep(0.5)
        freed = holders[victim]
        fresh = []
        for _ in range(freed):
            c, greeting = connect()
            assert greeting.startswith(b"220"), greeting
            fresh.append(c)
        held += fresh
    finally:
        for c in held:
            c.close()


def test_kill_the_queue_process_mail_keeps_flowing_exactly_once(daemon, as_root):
    """The queue process restarted while mail arrives: the smtp processes
    keep accepting (their commits wait for the new queue process, which
    also finds them on disk), and each message is delivered once."""
    daemon.start()
    for i in range(3):
        assert send_one(daemon, i)
    daemon.wait_delivered("alice", 3)
    [queue] = procs.roles(daemon.proc.pid, "queue")
    procs.kill(queue)
    for i in range(3, 8):
        assert send_one(daemon, i)          # accepted while no queue process runs
    deadline = time.monotonic() + 20
    while procs.roles(daemon.proc.pid, "queue") in ([], [queue]):
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.1)
    for i in range(8, 10):
        assert send_one(daemon, i)
    assert len(daemon.wait_delivered("alice", 10, timeout=30)) == 10
    time.sleep(1.0)
    assert len(daemon.delivered("alice")) == 10           # none twice
    assert "queue process (pid" in daemon.log() and "restarting it in" in daemon.log()
