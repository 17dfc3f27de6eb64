"""The global options: `hostname`, `smtp ...`, `queue ...`, `bounce
warn-interval`, `mda ...`, `scheduler limit`, and the 2012 spellings
`expire`, `max-message-size` and `bounce-warn` (docs/configuration.md,
Global options).

Each value lands in one place: `smtp` limits (and `queue min-free`) in
`Limits`, the others in their section's options (`queue`, `bounce`, `mda`,
`scheduler`, `processes` for `smtp workers` and `queue user`); a value
set twice is an error naming the first.  `mta ...` is in mta.py.
"""

from __future__ import annotations

import re

from postillion.config import values
from postillion.config.grammar.base import Grammar, _at
from postillion.config.lexer import Token
from postillion.config.model import MAX_SMTP_WORKERS
from postillion.config.stream import Stream, Syntax

SMTP_LIMITS = {
    "max-mails": "max_mails",
    "max-rcpt": "max_rcpt",
    "max-sessions": "max_sessions",
    "max-sessions-per-ip": "max_sessions_per_ip",
}
MDA_LIMITS = {"max-session": "max_session", "max-session-per-user": "max_session_per_user"}
MAX_WARN_INTERVALS = 4
# A system user name as shadow's useradd accepts it by default (a trailing
# `$` is for Samba's machine accounts); 32 characters is its limit.
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]*\$?\Z")
MAX_USER_NAME = 32


class OptionsGrammar(Grammar):
    """The global option statements but `mta`."""

    def _hostname(self, s: Stream, kw: Token) -> None:
        name = self._host_name(s.expect_value('a host name after "hostname"'))
        s.expect_end("hostname")
        if self.st.hostname is not None:
            raise Syntax(kw.pos, f"hostname already set at {_at(self.st.hostname[1])}")
        self.st.hostname = (name, kw.pos)
        self.use("hostname", kw.pos)

    def _smtp(self, s: Stream, kw: Token) -> None:
        opt = self._sub_option(s, "smtp", ["max-message-size", "limit", "sub-addr-delim",
                                           "ciphers", "workers"])
        if opt.text == "max-message-size":
            tok = s.expect_value('a size after "max-message-size"')
            self._set_limit("max_message_size", values.size(tok, "max-message-size"), opt)
            self.use("smtp max-message-size", opt.pos)
        elif opt.text == "sub-addr-delim":
            tok = s.expect_value('a character after "sub-addr-delim"')
            if len(tok.text) != 1 or tok.text.isalnum() or tok.text.isspace():
                raise Syntax(tok.pos, f"expected one punctuation character, got {tok.describe()}")
            self._set_limit("sub_addr_delim", tok.text, opt)
            self.use("smtp sub-addr-delim", opt.pos)
        elif opt.text == "ciphers":
            tok = s.expect_value('a cipher list after "ciphers"')
            if not tok.text or any(ch.isspace() for ch in tok.text):
                raise Syntax(tok.pos, f"expected an OpenSSL cipher list, got {tok.describe()}")
            self._set_limit("ciphers", tok.text, opt)
            self.use("smtp ciphers", opt.pos)
        elif opt.text == "workers":  # ProcessOptions: the supervisor reads it at start
            tok = s.expect_value('a number or "auto" after "workers"')
            self._set("processes", "smtp_workers", self._workers(tok), opt)
            self.use("smtp workers", opt.pos)
        else:
            for which, tok in self._limit_pairs(s, "smtp limit", SMTP_LIMITS):
                self._set_limit(SMTP_LIMITS[which.text], values.number(tok, which.text), which)
                self.use(f"smtp limit {which.text}", which.pos)
        s.expect_end(f"smtp {opt.text}")

    @staticmethod
    def _workers(tok: Token) -> int | None:
        """`auto` (None: the cores, resolved by the daemon) or 1..MAX_SMTP_WORKERS."""
        if tok.text == "auto":
            return None
        if not (tok.text.isascii() and tok.text.isdigit()):
            raise Syntax(tok.pos, f'expected a number or "auto" for smtp workers, '
                                  f"got {tok.describe()}")
        if len(tok.text) > 6 or not 1 <= int(tok.text) <= MAX_SMTP_WORKERS:
            raise Syntax(tok.pos, f'smtp workers must be 1..{MAX_SMTP_WORKERS} or "auto", '
                                  f"got {tok.text}")
        return int(tok.text)

    @staticmethod
    def _user(tok: Token) -> str:
        """A system user name for `queue user`; never root, whose processes could do anything."""
        if not _USER_NAME.match(tok.text) or len(tok.text) > MAX_USER_NAME:
            raise Syntax(tok.pos, f'expected a system user name such as _postillion (a-z, '
                                  f'0-9, "_" and "-", not starting with a digit or "-", at '
                                  f"most {MAX_USER_NAME} characters) for queue user, got "
                                  f"{tok.describe()}")
        if tok.text == "root":
            raise Syntax(tok.pos, 'queue user may not be "root": the smtp and queue processes '
                                  "run unprivileged")
        return tok.text

    def _queue(self, s: Stream, kw: Token) -> None:
        opt = self._sub_option(s, "queue", ["ttl", "compression", "min-free", "user",
                                            "encryption"])
        if opt.text == "encryption":
            raise Syntax(opt.pos, '"queue encryption" is not supported yet')
        if opt.text == "ttl":
            self._set("queue", "ttl", values.duration(s.expect_value('a delay after "ttl"'),
                                                      "queue ttl"), opt)
        elif opt.text == "min-free":  # in Limits: the SMTP session enforces it at MAIL
            tok = s.expect_value('a size after "min-free"')
            self._set_limit("queue_min_free", values.size(tok, "queue min-free"), opt)
        elif opt.text == "user":  # ProcessOptions: the supervisor reads it at start
            self._set("processes", "queue_user",
                      self._user(s.expect_value('a user name after "user"')), opt)
        else:
            self._set("queue", "compression", True, opt)
        s.expect_end(f"queue {opt.text}")
        self.use(f"queue {opt.text}", opt.pos)

    def _expire(self, s: Stream, kw: Token) -> None:
        """2012 `expire D` = `queue ttl D`."""
        self._set("queue", "ttl", values.duration(s.expect_value('a delay after "expire"'),
                                                  "expire"), kw)
        s.expect_end("expire")
        self.use("queue ttl", kw.pos)

    def _max_message_size(self, s: Stream, kw: Token) -> None:
        """2012 `max-message-size S` = `smtp max-message-size S`."""
        tok = s.expect_value('a size after "max-message-size"')
        self._set_limit("max_message_size", values.size(tok, "max-message-size"), kw)
        s.expect_end("max-message-size")
        self.use("smtp max-message-size", kw.pos)

    def _bounce(self, s: Stream, kw: Token) -> None:
        opt = self._sub_option(s, "bounce", ["warn-interval"])
        self._warn_intervals(s, opt)

    def _bounce_warn(self, s: Stream, kw: Token) -> None:
        """2012 `bounce-warn D[,D]` = `bounce warn-interval D[,D]`."""
        self._warn_intervals(s, kw)

    def _warn_intervals(self, s: Stream, opt: Token) -> None:
        delays = [values.duration(s.expect_value(f'a delay after "{opt.text}"'), opt.text)]
        while s.is_punct(","):
            s.next()
            delays.append(values.duration(s.expect_value('a delay after ","'), opt.text))
        if len(delays) > MAX_WARN_INTERVALS:
            raise Syntax(opt.pos, f"at most {MAX_WARN_INTERVALS} warn intervals, got {len(delays)}")
        s.expect_end(opt.text)
        self._set("bounce", "warn_interval", tuple(sorted(set(delays))), opt)
        self.use("bounce warn-interval", opt.pos)

    def _mda(self, s: Stream, kw: Token) -> None:
        opt = self._sub_option(s, "mda", ["limit", "wrapper"])
        if opt.text == "wrapper":
            name = s.expect_value('a wrapper name after "wrapper"')
            cmd = values.command(s.expect_value(f'a command after "wrapper {name.text}"'),
                                 "mda wrapper")
            s.expect_end("mda wrapper")
            if name.text in self.st.mda_wrappers:
                first = self.st.mda_wrappers[name.text][1]
                raise Syntax(name.pos, f"mda wrapper {name.text} already declared at {_at(first)}")
            self.st.mda_wrappers[name.text] = (cmd, name.pos)
        else:
            for which, tok in self._limit_pairs(s, "mda limit", MDA_LIMITS):
                self._set("mda", MDA_LIMITS[which.text], values.number(tok, which.text), which)
            s.expect_end("mda limit")
        self.use(f"mda {opt.text}", opt.pos)

    def _scheduler(self, s: Stream, kw: Token) -> None:
        opt = self._sub_option(s, "scheduler", ["limit"])
        for which, tok in self._limit_pairs(s, "scheduler limit", ["max-inflight"]):
            self._set("scheduler", "max_inflight", values.number(tok, which.text), which)
        s.expect_end("scheduler limit")
        self.use("scheduler limit", opt.pos)
