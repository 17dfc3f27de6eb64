"""Where the log goes: syslog's socket when there is one, else stderr with
one line saying so -- never silently to UDP port 514."""

from __future__ import annotations

import logging
import socket

from postillion import log
from postillion.smtp.server import format_sockaddr


def test_no_syslog_socket_means_stderr_and_one_line_saying_so(tmp_path, capsys):
    missing = tmp_path / "no-such-log-socket"
    assert log.setup(foreground=False, syslog_socket=str(missing)) == "stderr"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no syslog at {missing}" in err and "stderr" in err
    [handler] = logging.getLogger("postillion").handlers
    assert isinstance(handler, logging.StreamHandler)


def test_a_listening_syslog_socket_gets_the_lines(tmp_path, capsys):
    path = tmp_path / "log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind(str(path))
        assert log.setup(foreground=False, syslog_socket=str(path)) == "syslog"
        log.smtp_connected("0123456789abcdef", "127.0.0.1", "localhost")
        syslog.settimeout(5)
        line = syslog.recv(4096).decode()
    assert "postillion[" in line and "smtp connected address=127.0.0.1 host=localhost" in line
    assert capsys.readouterr().err == ""


def test_foreground_logs_to_stderr_without_a_word_about_syslog(capsys):
    assert log.setup(foreground=True) == "stderr"
    assert capsys.readouterr().err == ""


def test_listen_addresses_are_written_as_administrators_write_them():
    assert format_sockaddr(("127.0.0.1", 2525)) == "127.0.0.1:2525"
    assert format_sockaddr(("::1", 2525, 0, 0)) == "[::1]:2525"
