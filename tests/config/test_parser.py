"""Configs that parse: the demo config, tables, listeners, actions, matches.

The demo config is the one the daemon writes; it must give exactly this
model, since every other part builds itself from it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from postillion.config import ConfigError, load, parse
from postillion.config import files as files_module
from postillion.config.model import (
    MAX_SMTP_WORKERS,
    ActionDecl,
    Config,
    Criterion,
    Limits,
    ListenDecl,
    MatchDecl,
    MetricsDecl,
    Position,
    ProcessOptions,
    TableDecl,
)
from postillion.config.normal import to_modern
from postillion.config.support import unsupported

DEMO = """\
# Postillion demo configuration
table domains sqlite:/abs/var/sqlite.conf
table virtuals sqlite:/abs/var/sqlite.conf
table users sqlite:/abs/var/sqlite.conf
listen on 127.0.0.1 port 2525 hostname mail.example.test
action "local_mail" maildir virtual <virtuals> userbase <users>
match from any for domain <domains> action "local_mail"
match from local for local action "local_mail"
"""


@pytest.fixture(autouse=True)
def fixed_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files_module, "default_hostname", lambda: "default.test")


def P(line: int, column: int, file: str = "smtpd.conf") -> Position:
    return Position(file, line, column)


def test_demo_config() -> None:
    sql = "/abs/var/sqlite.conf"
    assert parse(DEMO, "smtpd.conf") == Config(
        path="smtpd.conf",
        hostname="default.test",
        tables={
            "domains": TableDecl("domains", "sqlite", sql, P(2, 1)),
            "virtuals": TableDecl("virtuals", "sqlite", sql, P(3, 1)),
            "users": TableDecl("users", "sqlite", sql, P(4, 1)),
        },
        listeners=(ListenDecl("127.0.0.1", P(5, 1), 2525, "mail.example.test"),),
        actions={
            "local_mail": ActionDecl("local_mail", "maildir", P(6, 1),
                                     virtual="virtuals", userbase="users"),
        },
        matches=(
            MatchDecl((Criterion("from-any", P(7, 7)),
                       Criterion("for-domain", P(7, 16), table="domains")),
                      P(7, 1), "local_mail"),
            MatchDecl((Criterion("from-local", P(8, 7)), Criterion("for-local", P(8, 18))),
                      P(8, 1), "local_mail"),
        ),
        limits=Limits(),
    )


def test_demo_config_from_file(tmp_path: Path) -> None:
    path = tmp_path / "smtpd.conf"
    path.write_text(DEMO.replace("/abs/var/sqlite.conf", "var/sqlite.conf"))
    config = load(path)
    assert config.path == str(path)
    assert config.tables["users"].config == str(tmp_path / "var" / "sqlite.conf")
    assert config.tables["users"].pos == Position(str(path), 4, 1)


def test_inline_tables() -> None:
    config = parse(
        "table l { a, b c\n  'd e' }\n"
        "table m {\n  k = v,\n  K2 => \"v 2\"\n}\n"
        "table e {}\n",
        "smtpd.conf",
    )
    assert config.tables["l"] == TableDecl("l", "static", None, P(1, 1), items=("a", "b", "c", "d e"))
    assert config.tables["m"] == TableDecl(
        "m", "static", None, P(3, 1), pairs=(("k", "v"), ("K2", "v 2")), is_map=True)
    assert config.tables["e"] == TableDecl("e", "static", None, P(7, 1))


def test_table_locations(tmp_path: Path) -> None:
    config = parse(
        "table a /etc/mail/aliases\n"
        "table b file:aliases\n"
        "table c db:../maps/x.db\n"
        'table d proc:"/usr/libexec/helper --opt"\n'
        "table e getpwnam:\n"
        'table "quoted-name" "sqlite:/etc/sql.conf"\n',
        str(tmp_path / "etc" / "smtpd.conf"),
    )
    located = {n: (t.backend, t.config) for n, t in config.tables.items()}
    assert located == {
        "a": ("file", "/etc/mail/aliases"),
        "b": ("file", str(tmp_path / "etc" / "aliases")),
        "c": ("db", str(tmp_path / "maps" / "x.db")),
        "d": ("proc", "/usr/libexec/helper --opt"),
        "e": ("getpwnam", None),
        "quoted-name": ("sqlite", "/etc/sql.conf"),
    }


def test_listen_defaults_and_option_order() -> None:
    config = parse("listen on lo\nlisten on ::1 hostname mx.test port 587\n", "smtpd.conf")
    assert config.listeners == (
        ListenDecl("lo", P(1, 1)),
        ListenDecl("::1", P(2, 1), 587, "mx.test"),
    )


def test_metrics_endpoint_is_an_address_in_normal_form_and_converts_back() -> None:
    assert parse("listen on lo\n", "smtpd.conf").metrics is None
    config = parse("metrics listen on [0:0::1] port 9100\n", "smtpd.conf")
    assert config.metrics == MetricsDecl("::1", 9100, P(1, 1))
    assert "metrics listen on ::1 port 9100\n" in to_modern(config)
    assert unsupported(config) == []


def test_actions() -> None:
    config = parse(
        "table aliases { root = gilles }\ntable u { gilles = \"1000:1000:/home/gilles\" }\n"
        'action "from" maildir "/var/vmail/%{rcpt.domain}/%{rcpt.user}" alias <aliases>\n'
        "action home maildir ~/Maildir userbase <u>\n"
        "action plain maildir\n",
        "smtpd.conf",
    )
    assert config.actions == {
        "from": ActionDecl("from", "maildir", P(3, 1), "/var/vmail/%{rcpt.domain}/%{rcpt.user}",
                           alias="aliases"),
        "home": ActionDecl("home", "maildir", P(4, 1), "~/Maildir", userbase="u"),
        "plain": ActionDecl("plain", "maildir", P(5, 1)),
    }


def test_match_defaults_negation_and_order() -> None:
    config = parse(
        'action "a" maildir\n'
        "match for any action a\n"
        "match !for domain <d> from any reject\n"
        "match reject\n"
        "table d { example.org }\n",
        "smtpd.conf",
    )
    assert config.matches == (
        MatchDecl((Criterion("from-local", P(2, 1)), Criterion("for-any", P(2, 7))), P(2, 1), "a"),
        MatchDecl((Criterion("from-any", P(3, 23)),
                   Criterion("for-domain", P(3, 7), negate=True, table="d")), P(3, 1), None),
        MatchDecl((Criterion("from-local", P(4, 1)), Criterion("for-local", P(4, 1))), P(4, 1)),
    )


def test_inline_match_values_become_anonymous_tables() -> None:
    config = parse(
        'action "a" maildir\n'
        "match from src 10.0.0.0/8 for domain { example.org, example.net } action a\n"
        'match for domain "example.com" action a\n',
        "smtpd.conf",
    )
    src, dom = config.matches[0].criteria
    assert (src.kind, src.table) == ("from-src", "anon:smtpd.conf:2:16")
    assert (dom.kind, dom.table) == ("for-domain", "anon:smtpd.conf:2:38")
    assert config.tables["anon:smtpd.conf:2:16"] == TableDecl(
        "anon:smtpd.conf:2:16", "static", None, P(2, 16), items=("10.0.0.0/8",))
    assert config.tables["anon:smtpd.conf:2:38"].items == ("example.org", "example.net")
    assert config.tables["anon:smtpd.conf:3:18"].items == ("example.com",)


def test_globals_and_limits() -> None:
    config = parse(
        "hostname mx.example.org\n"
        "smtp max-message-size 35M\n"
        "smtp limit max-rcpt 50 max-mails 7\n"
        "smtp limit max-sessions 10 max-sessions-per-ip 2\n"
        "smtp sub-addr-delim -\n",
        "smtpd.conf",
    )
    assert config.hostname == "mx.example.org"
    assert config.limits == Limits(max_message_size=36_700_160, max_rcpt=50, max_mails=7,
                                   max_sessions=10, max_sessions_per_ip=2, sub_addr_delim="-")
    assert parse("smtp max-message-size 2k\n", "x").limits.max_message_size == 2048
    assert parse("smtp max-message-size 1G\n", "x").limits.max_message_size == 1024**3


def test_queue_min_free_is_a_limit() -> None:
    """`queue min-free S`: the spool space MAIL requires (452 4.3.1 below it)."""
    assert Limits().queue_min_free == 100 * 1024 * 1024
    config = parse("queue min-free 64k\n", "smtpd.conf")
    assert config.limits == Limits(queue_min_free=65536)
    assert unsupported(config) == []
    assert "queue min-free 65536" in to_modern(config).splitlines()
    assert parse(to_modern(config), "again.conf").limits == config.limits
    assert "min-free" not in to_modern(parse("", "x"))
    with pytest.raises(ConfigError) as info:
        parse("queue min-free 0\nqueue min-free 1x\nqueue min-free\n"
              "queue min-free 1M\nqueue min-free 2M\nqueue minfree 1M\n", "smtpd.conf")
    assert str(info.value).splitlines() == [
        "smtpd.conf:1:16: queue min-free must be at least 1, got 0",
        'smtpd.conf:2:16: expected a size such as 35M for queue min-free, got "1x"',
        'smtpd.conf:3:15: expected a size after "min-free", got end of line',
        'smtpd.conf:5:7: "min-free" already set at smtpd.conf:4:7',
        'smtpd.conf:6:7: unknown queue option "minfree"; did you mean "min-free"?',
    ]


def test_smtp_workers_and_queue_user_are_process_options() -> None:
    """`smtp workers N|auto`, `queue user NAME`: ours, read by the supervisor at start."""
    assert parse("", "x").processes == ProcessOptions(smtp_workers=None, queue_user="_postillion")
    config = parse("smtp workers 4\nqueue user mailer\n", "smtpd.conf")
    assert config.processes == ProcessOptions(smtp_workers=4, queue_user="mailer")
    assert config.limits == Limits()
    assert unsupported(config) == []
    assert to_modern(config).splitlines()[1:] == ["smtp workers 4", 'queue user "mailer"']
    assert parse(to_modern(config), "again.conf").processes == config.processes
    assert parse("smtp workers auto\nqueue user _postillion\n", "x") == parse("", "x")
    assert "workers" not in to_modern(parse("", "x"))
    assert "user" not in to_modern(parse("", "x"))
    # Every name a system account may have, macros and quotes as for any value.
    for name in ("_postillion", "smtp-q", "a", "m$", "x" * 32):
        assert parse(f'u = "{name}"\nqueue user $u\n', "x").processes.queue_user == name
    assert parse(f"smtp workers {MAX_SMTP_WORKERS}\n", "x").processes.smtp_workers == 64


def test_auto_smtp_workers_are_the_cores_within_bounds() -> None:
    auto = ProcessOptions()
    assert [auto.effective_smtp_workers(cores=n) for n in (0, 1, 6, 64, 256)] == [1, 1, 6, 64, 64]
    assert 1 <= auto.effective_smtp_workers() <= min(os.cpu_count() or 1, MAX_SMTP_WORKERS)
    assert ProcessOptions(smtp_workers=3).effective_smtp_workers(cores=16) == 3


def test_smtp_workers_and_queue_user_errors() -> None:
    with pytest.raises(ConfigError) as info:
        parse("smtp workers 0\nsmtp workers -2\nsmtp workers 1.5\nsmtp workers 65\n"
              "smtp workers 99999999999999999999\nsmtp workers\nsmtp workers 2\n"
              "smtp workers auto\nsmtp worker 2\n"
              "queue user root\nqueue user Mail\nqueue user 1000\nqueue user -x\n"
              f"queue user {'u' * 33}\nqueue user\nqueue user mail\nqueue user _p\n"
              "queue usr mail\n", "smtpd.conf")
    name_rule = ('expected a system user name such as _postillion (a-z, 0-9, "_" and "-", '
                 'not starting with a digit or "-", at most 32 characters) for queue user, got')
    assert str(info.value).splitlines() == [
        'smtpd.conf:1:14: smtp workers must be 1..64 or "auto", got 0',
        'smtpd.conf:2:14: expected a number or "auto" for smtp workers, got "-2"',
        'smtpd.conf:3:14: expected a number or "auto" for smtp workers, got "1.5"',
        'smtpd.conf:4:14: smtp workers must be 1..64 or "auto", got 65',
        'smtpd.conf:5:14: smtp workers must be 1..64 or "auto", got 99999999999999999999',
        'smtpd.conf:6:13: expected a number or "auto" after "workers", got end of line',
        'smtpd.conf:8:6: "workers" already set at smtpd.conf:7:6',
        'smtpd.conf:9:6: unknown smtp option "worker"; did you mean "workers"?',
        'smtpd.conf:10:12: queue user may not be "root": the smtp and queue processes '
        "run unprivileged",
        f'smtpd.conf:11:12: {name_rule} "Mail"',
        f'smtpd.conf:12:12: {name_rule} "1000"',
        f'smtpd.conf:13:12: {name_rule} "-x"',
        f'smtpd.conf:14:12: {name_rule} "{"u" * 33}"',
        'smtpd.conf:15:11: expected a user name after "user", got end of line',
        'smtpd.conf:17:7: "user" already set at smtpd.conf:16:7',
        'smtpd.conf:18:7: unknown queue option "usr"; did you mean "user"?',
    ]


def test_macros_and_defines() -> None:
    text = 'addr = "127.0.0.1"\nport = 25\nlisten on $addr port $port\n'
    assert parse(text, "x").listeners[0].port == 25
    config = parse(text, "x", defines={"port": "2525"})
    assert (config.listeners[0].address, config.listeners[0].port) == ("127.0.0.1", 2525)


def test_include_relative_to_includer(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "tables.conf").write_text(
        'db = "sqlite:sql.conf"\ntable users $db\n')
    (tmp_path / "smtpd.conf").write_text(
        'include "conf.d/tables.conf"\naction "a" maildir userbase <users>\nhostname $db\n')
    config = load(tmp_path / "smtpd.conf")
    users = config.tables["users"]
    assert users.config == str(tmp_path / "conf.d" / "sql.conf")
    assert users.pos == Position(str(tmp_path / "conf.d" / "tables.conf"), 2, 1)
    assert config.actions["a"].userbase == "users"
    assert config.hostname == "sqlite:sql.conf"


def test_continuation_and_comments() -> None:
    config = parse(
        "listen on 127.0.0.1 \\\n   port 2526 # a comment \\\n\n"
        "table t { a, # one\n  b }\n",
        "smtpd.conf",
    )
    assert config.listeners == (ListenDecl("127.0.0.1", P(1, 1), 2526),)
    assert config.tables["t"].items == ("a", "b")


def test_default_hostname_reads_mailname(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.undo()  # the real default_hostname
    real_open = open
    mailname = tmp_path / "mailname"
    mailname.write_text("mail.example.test\n")

    def fake_open(path, *args, **kwargs):
        if os.fspath(path) == "/etc/mailname":
            return real_open(mailname, *args, **kwargs)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    assert files_module.default_hostname() == "mail.example.test"
    mailname.write_text("\n")
    monkeypatch.setattr(files_module.socket, "gethostname", lambda: "fqdn.test")
    assert files_module.default_hostname() == "fqdn.test"


def test_default_hostname_is_the_machines_name_never_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where /etc/hosts maps the host name to 127.0.0.1 after `localhost`
    (this machine, and many), getfqdn() says "localhost"; the banner must
    carry the machine's name."""
    monkeypatch.undo()
    monkeypatch.setattr(files_module.socket, "gethostname", lambda: "vm-test")
    monkeypatch.setattr(files_module.socket, "getaddrinfo",
                        lambda *a, **k: [(2, 1, 6, "localhost", ("127.0.0.1", 0))])
    monkeypatch.setattr(files_module, "open", lambda *a, **k: (_ for _ in ()).throw(OSError()),
                        raising=False)
    assert files_module.default_hostname() == "vm-test"
    monkeypatch.setattr(files_module.socket, "getaddrinfo",
                        lambda *a, **k: [(2, 1, 6, "vm-test.example.org", ("192.0.2.1", 0))])
    assert files_module.default_hostname() == "vm-test.example.org"
    monkeypatch.undo()
    if not os.path.exists("/etc/mailname"):
        assert files_module.default_hostname() not in ("localhost", "localhost.localdomain")


def test_mta_nameserver_is_an_ip_with_an_optional_port():
    from postillion.config import parse
    from postillion.config.errors import ConfigError
    config = parse("mta nameserver 127.0.0.1 port 5353\nmta nameserver 2001:db8::53\n", "x.conf")
    assert config.mta.nameservers == (("127.0.0.1", 5353), ("2001:db8::53", 53))
    assert parse("", "x.conf").mta.nameservers == ()
    for bad, col in (("mta nameserver ns1.example.org\n", 16), ("mta nameserver 127.0.0.1 port 0\n", 31)):
        try:
            parse(bad, "x.conf")
        except ConfigError as e:
            assert f"x.conf:1:{col}:" in str(e), str(e)
        else:
            raise AssertionError(f"accepted {bad!r}")
