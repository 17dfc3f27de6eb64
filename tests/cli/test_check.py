"""`postillion check`: exit 0 on a good config, file:line:column and 1 on a bad one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def postillion(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "postillion.cli", *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd)


def test_check_broken_config_names_position(tmp_path):
    conf = tmp_path / "smtpd.conf"
    conf.write_text("table users { alice = 1:1:/home/alice }\n"
                    "listen on 127.0.0.1 port 2525\n"
                    "match from any to domain <users> action x\n")
    result = postillion("check", "-f", str(conf))
    assert result.returncode != 0
    assert f"{conf}:3:" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_demo_config_is_valid(tmp_path):
    # `postillion run` writes the demo config under ./var; check it as written.
    from postillion.demo import ensure_demo
    paths = ensure_demo(tmp_path / "var")
    result = postillion("check", "-f", str(paths.config))
    assert result.returncode == 0, result.stderr


def test_help_everywhere():
    for args in (["--help"], ["run", "--help"], ["check", "--help"]):
        result = postillion(*args)
        assert result.returncode == 0 and "usage:" in result.stdout


def test_run_with_an_unusable_spool_says_so_in_one_line(tmp_path):
    from postillion.demo import ensure_demo
    paths = ensure_demo(tmp_path / "var")
    blocker = tmp_path / "file"
    blocker.write_text("a file where the spool's parent should be")
    result = postillion("run", "-d", "-f", str(paths.config), "-s", str(blocker / "spool"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith(f"postillion: queue {blocker / 'spool'}: ")


def test_check_refuses_a_relay_pki_that_does_not_load(tmp_path):
    (tmp_path / "c").write_text("not a certificate\n")
    (tmp_path / "k").write_text("not a key\n")
    conf = tmp_path / "p.conf"
    conf.write_text(f"pki mx.example.test cert {tmp_path / 'c'}\npki mx.example.test key {tmp_path / 'k'}\n"
                    "listen on 127.0.0.1 port 2598\n"
                    'action "out" relay host smtp://relay.example.test pki mx.example.test\n'
                    'match from local for any action "out"\n')
    result = subprocess.run([sys.executable, "-m", "postillion.cli", "check", "-f", str(conf)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{conf}:1:1: pki mx.example.test: cannot load ")
