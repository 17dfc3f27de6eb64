"""The parts of a reload that touch no process (daemon/reload.py): the
file read again with its macros, refusals naming file:line, what may not
change, and which listening sockets a new configuration keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from postillion.config import load
from postillion.daemon.reload import (ConfigSource, ReloadRefused, fixed_options, listen_key,
                                      located)


def test_the_source_reads_the_file_again_with_its_macros(tmp_path: Path):
    conf = tmp_path / "postillion.conf"
    conf.write_text("port = 2525\nlisten on 127.0.0.1 port $port\n")
    source = ConfigSource.of(conf, {"port": "2526"})
    assert source.path.is_absolute()
    assert [d.effective_port for d in source.load().listeners] == [2526]
    conf.write_text("listen on 127.0.0.1 port $port\nmatch from any for\nmatch for\n")
    with pytest.raises(ReloadRefused) as info:
        source.load()
    text = str(info.value)
    assert text.startswith(f"{conf}:2:") and "\n" not in text
    assert "(and 1 more: postillion check" in text
    conf.unlink()
    with pytest.raises(ReloadRefused, match=f"^{conf}:1:1: cannot read {conf}: No such file"):
        source.load()


def test_refusals_name_where_they_come_from(tmp_path: Path):
    conf = tmp_path / "postillion.conf"
    conf.write_text("listen on 127.0.0.1\ntable users file:/nowhere\n")
    config = load(conf)
    assert located(f"{conf}:1:1: cannot listen", config, conf) == f"{conf}:1:1: cannot listen"
    assert located("table users: file: /nowhere: gone", config, conf) == \
        f"{conf}:2:1: table users: file: /nowhere: gone"
    assert located("something\nelse", config, conf) == f"{conf}: something else"


def test_the_queue_user_needs_a_restart(tmp_path: Path):
    conf = tmp_path / "postillion.conf"
    conf.write_text("smtp workers 2\n")
    old = load(conf)
    conf.write_text("smtp workers 4\n")
    assert fixed_options(old, load(conf), conf) is None
    conf.write_text("queue user someone\n")
    assert "queue user someone differs" in (fixed_options(old, load(conf), conf) or "")


def test_a_listener_is_its_family_port_and_addresses(tmp_path: Path):
    conf = tmp_path / "postillion.conf"
    conf.write_text("listen on 127.0.0.1 port 2525 tls-require hostname a\n"
                    "listen on 127.0.0.1 port 2525 hostname b\n"
                    "listen on 127.0.0.1 port 2526\n"
                    "listen on 127.0.0.1 port 2525 inet4\n")
    a, b, c, d = load(conf).listeners
    assert listen_key(a, ["127.0.0.1"]) == listen_key(b, ["127.0.0.1"])   # TLS, names: no matter
    assert listen_key(a, ["127.0.0.1"]) != listen_key(c, ["127.0.0.1"])
    assert listen_key(a, ["127.0.0.1"]) != listen_key(d, ["127.0.0.1"])
    assert listen_key(a, ["::1", "127.0.0.1"]) == listen_key(a, ["127.0.0.1", "::1"])
    assert listen_key(a, None) != listen_key(a, ["127.0.0.1"])
