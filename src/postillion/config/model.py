"""The immutable Config model that every grammar compiles into.

The parser (modern or 2012 grammar) builds these frozen dataclasses; the
daemon builds tables, listeners, rules and agents from them and nothing else.
Every declaration keeps its `Position` so a later check (an undefined table,
an option not implemented yet) can still name `file:line:column`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping

SECONDS = 1.0
MINUTES = 60 * SECONDS
KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where a token starts: file path as written, 1-based line and column."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class Limits:
    """Every SMTP limit, named as its config keyword (`-` -> `_`), with unit.

    Defaults are SPEC.md §4.3 and §6.3; this is the one place they live.
    """

    max_message_size: int = 35 * MIB      # smtp max-message-size: octets after unstuffing
    max_rcpt: int = 1000                  # smtp limit max-rcpt: per transaction
    max_mails: int = 100                  # smtp limit max-mails: per session
    max_sessions: int = 1000              # smtp limit max-sessions
    max_sessions_per_ip: int = 50         # smtp limit max-sessions-per-ip
    max_line: int = 4096                  # command line, CRLF included
    max_auth_line: int = 12288            # AUTH continuation lines
    max_data_line: int = 65535            # message line, CRLF included
    max_failed_commands: int = 10         # failed commands in a row -> 421
    max_rejected_rcpt: int = 50           # rejected RCPT per session -> 421
    command_timeout: float = 300 * SECONDS  # a command line must complete / idle
    session_timeout: float = 30 * MINUTES   # whole session
    max_hops: int = 100                   # Received: headers before 554 5.4.6
    expand_depth: int = 10                # alias expansion depth
    sub_addr_delim: str = "+"             # smtp sub-addr-delim
    tls_timeout: float = 30 * SECONDS     # TLS handshake, then close
    max_failed_auth: int = 3              # failed AUTH per session -> 421 4.7.0
    ciphers: str = "HIGH:!aNULL:!MD5"     # smtp ciphers; TLS >= 1.2 always


@dataclass(frozen=True, slots=True)
class TableDecl:
    """`table NAME backend:config` or an inline `{ ... }`.

    backend is the name as written ("static", "file", "sqlite", ...); for a
    bare path it is "file".  config is the text after `backend:` (a path for
    file/sqlite, made absolute against the declaring file's directory), or
    None for inline tables.  An inline list fills `items`, an inline map fills
    `pairs` (keys as written; the table layer lowercases them).
    """

    name: str
    backend: str
    config: str | None
    pos: Position
    items: tuple[str, ...] = ()
    pairs: tuple[tuple[str, str], ...] = ()
    is_map: bool = False


@dataclass(frozen=True, slots=True)
class PkiDecl:
    """`pki NAME cert FILE` / `pki NAME key FILE` / `pki NAME dhe ...`, merged by NAME."""

    name: str
    pos: Position
    cert: str | None = None
    key: str | None = None
    dhe: str | None = None


@dataclass(frozen=True, slots=True)
class CaDecl:
    """`ca NAME cert FILE`: the CA bundle a listener verifies client certificates with."""

    name: str
    pos: Position
    cert: str


@dataclass(frozen=True, slots=True)
class ListenDecl:
    """`listen on ADDRESS [OPTION ...]` (SPEC §4.2), one per statement.

    `port` is None when not written: 25, or 465 with `smtps`.  `tls` offers
    STARTTLS; `tls_require` demands it before MAIL; `verify` (after
    `tls-require` or `smtps`) demands a client certificate valid for `ca`.
    `auth` is "" (none), "required" or "optional"; `auth_table` None with
    auth set means the system password database.
    """

    address: str
    pos: Position
    port: int | None = None
    hostname: str | None = None
    family: str | None = None            # "inet4" | "inet6" | None (both)
    tls: bool = False
    tls_require: bool = False
    smtps: bool = False
    verify: bool = False
    pki: tuple[str, ...] = ()
    ca: str | None = None
    auth: str = ""                       # "" | "required" | "optional"
    auth_table: str | None = None
    insecure_auth: bool = False
    hostnames: str | None = None         # table (addrname)
    senders: str | None = None           # table (mailaddrmap)
    masquerade: bool = False
    tag: str | None = None
    mask_src: bool = False
    no_dsn: bool = False
    received_auth: bool = False

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 465 if self.smtps else 25


@dataclass(frozen=True, slots=True)
class ActionDecl:
    """`action NAME METHOD [OPTION ...]`: how matching envelopes are delivered.

    Only `maildir` exists in the skeleton.  `path` is the maildir path with
    format specifiers unexpanded (None: `~/Maildir`).  Table references are
    table names; the parser has checked they are declared.
    """

    name: str
    method: Literal["maildir"]
    pos: Position
    path: str | None = None
    alias: str | None = None
    virtual: str | None = None
    userbase: str | None = None


@dataclass(frozen=True, slots=True)
class Criterion:
    """One `[!]from ...` / `[!]for ...` criterion of a match rule.

    kind is one of "from-local", "from-any", "from-src", "for-local",
    "for-any", "for-domain"; `table` names the table for src/domain (an inline
    value such as `from src 10.0.0.0/8` becomes an anonymous static table
    declared by the parser).
    """

    kind: str
    pos: Position
    negate: bool = False
    table: str | None = None


@dataclass(frozen=True, slots=True)
class MatchDecl:
    """`match CRITERIA (action NAME | reject)`; action None means reject.

    Missing from/for criteria default to `from local` / `for local` (the
    parser inserts them, so rules never have to guess).
    """

    criteria: tuple[Criterion, ...]
    pos: Position
    action: str | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """A whole smtpd.conf, validated: every reference resolves."""

    path: str
    hostname: str
    tables: Mapping[str, TableDecl] = field(default_factory=dict)
    listeners: tuple[ListenDecl, ...] = ()
    actions: Mapping[str, ActionDecl] = field(default_factory=dict)
    matches: tuple[MatchDecl, ...] = ()
    limits: Limits = field(default_factory=Limits)
    pkis: Mapping[str, PkiDecl] = field(default_factory=dict)
    cas: Mapping[str, CaDecl] = field(default_factory=dict)
