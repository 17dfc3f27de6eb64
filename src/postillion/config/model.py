"""The immutable Config model that every grammar compiles into.

The parser (modern or 2012 grammar) builds these frozen dataclasses; the
daemon builds tables, listeners, rules and agents from them and nothing else.
Every declaration keeps its `Position` so a later check (an undefined table,
an option not implemented yet) can still name `file:line:column`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

SECONDS = 1.0
MINUTES = 60 * SECONDS
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


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

    Defaults as docs/smtp.md (Limits) lists them; this is the one place they live.
    """

    max_message_size: int = 35 * MIB      # smtp max-message-size: octets after unstuffing
    # Free space is statvfs f_bavail (what an unprivileged writer may use);
    # below the reserve, or below it plus MAIL's SIZE=, MAIL gets 452 4.3.1.
    # 100M is about three messages of the default max-message-size: the mail
    # already accepted can still be updated and bounced when the disk fills
    # (Postfix's queue_minfree is 0, floored at 1.5 x its message size limit).
    queue_min_free: int = 100 * MIB       # queue min-free: octets the spool keeps free
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
    #: octets/s (Postfix's smtpd_min_data_rate): the DATA or BDAT phase must
    #: end within command_timeout plus 1 s per this many octets received,
    #: else 421 4.4.2 and close; a trickled message cannot hold a session.
    min_data_rate: int = 500
    max_hops: int = 100                   # Received: headers before 554 5.4.6
    expand_depth: int = 10                # alias expansion depth
    sub_addr_delim: str = "+"             # smtp sub-addr-delim
    tls_timeout: float = 30 * SECONDS     # TLS handshake, then close
    max_failed_auth: int = 3              # failed AUTH per session -> 421 4.7.0
    # The work a stored password hash may ask for: above, the hash is
    # malformed (AUTH 454 4.7.0 and a warning), never hours of a thread.
    auth_max_bcrypt_cost: int = 14        # bcrypt cost, log2 of its rounds (12: ~0.25 s)
    auth_max_rounds: int = 1_000_000      # SHA-crypt rounds= (also $sha1$, $md5, BSDi _)
    auth_max_memory: int = 256 * MIB      # octets of yescrypt (128*N*r, times t+1) / scrypt
    auth_threads: int = 2                 # threads hashing AUTH passwords, shared by listeners
    auth_max_waiting: int = 16            # AUTH checks waiting for a thread; more: 454 4.7.0
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
    """`listen on ADDRESS [OPTION ...]` (docs/configuration.md, listen on), one per statement.

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
class RelayHost:
    """A relay URL `[scheme://][label@]host[:port]` (docs/configuration.md), in modern meaning.

    `scheme` is what the URL means today, whatever grammar wrote it:
    "smtp" (STARTTLS if offered), "smtp+tls" (STARTTLS required, verified),
    "smtp+notls" (never TLS), "smtps" (TLS on connect), "lmtp", or "ssl" --
    the 2012 `ssl://` (STARTTLS on 25, else TLS on 465, never plain), which
    has no modern spelling.  `host` keeps brackets for literals
    (`[192.0.2.1]`, `[IPv6:2001:db8::1]`).  `port` None = the scheme's
    default (25, 465 for smtps).  `label` is the key of the credentials
    lookup in the action's `auth` table (docs/configuration.md, Relay URLs).
    """

    scheme: str
    host: str
    port: int | None = None
    label: str | None = None

    @property
    def effective_port(self) -> int | None:
        if self.port is not None:
            return self.port
        return {"smtps": 465, "lmtp": None}.get(self.scheme, 25)

    @property
    def tls_mandatory(self) -> bool:
        return self.scheme in ("smtp+tls", "smtps", "ssl")

    def url(self) -> str:
        """The URL in modern spelling (`ssl` has none: written `ssl://`)."""
        label = f"{self.label}@" if self.label else ""
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme}://{label}{self.host}{port}"


#: Methods of `action` (docs/configuration.md); local ones take alias/virtual/userbase/user/wrapper.
LOCAL_METHODS = ("maildir", "mbox", "lmtp", "mda", "forward-only", "expand-only")
METHODS = (*LOCAL_METHODS, "relay")


@dataclass(frozen=True, slots=True)
class ActionDecl:
    """`action NAME METHOD [OPTION ...]`: how matching envelopes are delivered.

    method is one of METHODS.  `path` is the maildir path with format
    specifiers unexpanded (None: `~/Maildir`); `command` the `mda` command,
    `destination` the `lmtp` HOST:PORT or /socket.  Table references are
    table names (an inline value such as `src 192.0.2.1` becomes an
    anonymous table); the parser has checked they are declared.  `ttl` is
    seconds (None: `queue ttl`).  Relay options are None/False unless the
    method is relay: `host` (a URL) or `host_table` (fetched per envelope),
    `domain` (relayhost table), `backup`/`backup_mx`, `tls`/`no_verify`,
    `auth` (credentials table keyed by the URL label), `helo`/`helo_src`,
    `src`, `mail_from`, `pki`, `ca`.
    """

    name: str
    method: str
    pos: Position
    path: str | None = None
    alias: str | None = None
    virtual: str | None = None
    userbase: str | None = None
    junk: bool = False
    command: str | None = None
    destination: str | None = None
    rcpt_to: bool = False
    user: str | None = None
    wrapper: str | None = None
    ttl: float | None = None
    host: RelayHost | None = None
    host_table: str | None = None
    domain: str | None = None
    backup: bool = False
    backup_mx: str | None = None
    tls: bool = False
    no_verify: bool = False
    auth: str | None = None
    helo: str | None = None
    helo_src: str | None = None
    src: str | None = None
    mail_from: str | None = None
    pki: str | None = None
    ca: str | None = None


#: Criterion kinds (docs/configuration.md, match), as `match` spells them with `-` for blanks.
CRITERIA = (
    "from-any", "from-local", "from-socket", "from-src", "from-rdns", "from-auth",
    "from-mail-from", "for-any", "for-local", "for-domain", "for-rcpt-to",
    "auth", "helo", "mail-from", "rcpt-to", "tag", "tls",
)


@dataclass(frozen=True, slots=True)
class Criterion:
    """One `[!]OPTION` of a match rule (docs/configuration.md, match).

    kind is one of CRITERIA.  `table` names the table for the value-taking
    kinds (an inline value such as `from src 10.0.0.0/8` becomes an anonymous
    static table declared by the parser); None for the kinds whose value is
    optional (`from rdns`, `from auth`, `auth`) when none was written.
    `regex` marks `regex <t>`: the table's elements are Python regular
    expressions matched in full.
    """

    kind: str
    pos: Position
    negate: bool = False
    table: str | None = None
    regex: bool = False


@dataclass(frozen=True, slots=True)
class MatchDecl:
    """`match CRITERIA (action NAME | reject)`; action None means reject.

    Missing from/for criteria default to `from local` / `for local` (the
    parser inserts them, so rules never have to guess).  Criteria come in the
    order from, for, then the others as written.
    """

    criteria: tuple[Criterion, ...]
    pos: Position
    action: str | None = None


HOURS = 60 * MINUTES
DAYS = 24 * HOURS


@dataclass(frozen=True, slots=True)
class QueueOptions:
    """`queue ttl D` (2012: `expire D`) and `queue compression` (docs/configuration.md)."""

    ttl: float = 4 * DAYS                 # queue ttl: envelope lifetime before bounce
    compression: bool = False             # queue compression: gzip message files


@dataclass(frozen=True, slots=True)
class BounceOptions:
    """`bounce warn-interval D[,D...]` (2012: `bounce-warn`), at most 4 delays."""

    warn_interval: tuple[float, ...] = (4 * HOURS,)


@dataclass(frozen=True, slots=True)
class MtaLimit:
    """`mta limit [for domain D] KEY VALUE` (docs/configuration.md); domain None = global."""

    key: str
    value: int
    domain: str | None = None


@dataclass(frozen=True, slots=True)
class MtaOptions:
    """`mta max-deferred N`, the `mta limit` lines in order written, and
    `mta nameserver` (ours: a resolver other than the system's)."""

    max_deferred: int = 100               # mta max-deferred: envelopes held per relay
    limits: tuple[MtaLimit, ...] = ()
    #: `mta nameserver IP [port N]`: the DNS servers the MTA asks, in order;
    #: none (the default) = the system's, from /etc/resolv.conf.
    nameservers: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class MdaOptions:
    """`mda limit max-session N max-session-per-user N`, `mda wrapper NAME "CMD"`,
    and the settings of local delivery that smtpd.conf has no keyword for.

    The last group is ours and fixed, as OpenSMTPD compiles its mail spool
    path in: a named default here, in one place, rather than scattered
    constants (an in-process test points `mbox_directory` at its own
    directory).  docs/configuration.md (Local delivery) lists them.
    """

    max_session: int = 50                 # mda limit max-session: deliveries at once
    max_session_per_user: int = 7         # mda limit max-session-per-user: at once per uid
    wrappers: tuple[tuple[str, str], ...] = ()   # (name, command) in order written
    #: `mbox` appends to DIRECTORY/USER: Debian's and OpenBSD's mail spool.
    mbox_directory: str = "/var/mail"
    #: An `mda` command or `|command` target must end within this, else it
    #: is killed (with all it started) and the delivery is temporary.
    command_timeout: float = 300 * SECONDS
    #: CPU seconds a command may use (RLIMIT_CPU), then SIGXCPU: temporary.
    command_cpu: int = 300
    #: RLIMIT_FSIZE of every delivery (octets): the largest file a delivery
    #: may write or grow, an mbox included; beyond, the write fails and the
    #: delivery is temporary (a mailbox too large to grow).
    max_file_size: int = 4 * GIB


@dataclass(frozen=True, slots=True)
class SchedulerOptions:
    """`scheduler limit max-inflight N`."""

    max_inflight: int = 5000


#: The most smtp processes `smtp workers N` may ask for, and the cap on `auto`:
#: each is a whole Python interpreter (tens of MB), so a slip such as
#: `smtp workers 640`, or a machine with hundreds of cores, cannot start hundreds.
MAX_SMTP_WORKERS = 64


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, else the machine's), at least 1.

    The affinity mask is what a container or `taskset` leaves us; counting
    every core of the machine would start processes that only queue for the
    same few (Python 3.13's os.process_cpu_count does the same).
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class ProcessOptions:
    """`smtp workers N|auto` and `queue user NAME`: how the daemon splits into processes.

    Both are ours, not OpenSMTPD's (docs/configuration.md, Global options).
    They sit together, apart from `Limits`, because only the supervisor reads
    them, once, when it starts its processes: a session never does, and a
    change means a restart, not a reload (`old.processes != new.processes`).
    The parser keeps the config pure: `auto` stays None here and
    `effective_smtp_workers()` applies the machine's cores when asked.
    """

    smtp_workers: int | None = None       # smtp workers: smtp processes; None = auto (the cores)
    # queue user: the unprivileged account the smtp and queue processes run as
    # when the daemon starts as root (never root: the parser refuses the name,
    # the daemon uid 0); started by another user, everything runs as that user.
    queue_user: str = "_postillion"

    def effective_smtp_workers(self, cores: int | None = None) -> int:
        """The number of smtp processes to start: as written, or `auto` resolved.

        `auto` is the cores this process may use (`available_cores()`, or
        `cores` when given), between 1 and MAX_SMTP_WORKERS.
        """
        if self.smtp_workers is not None:
            return self.smtp_workers
        n = available_cores() if cores is None else cores
        return max(1, min(n, MAX_SMTP_WORKERS))


@dataclass(frozen=True, slots=True)
class MetricsDecl:
    """`metrics listen on ADDRESS port PORT`: where Prometheus scrapes `/metrics`.

    Ours, not OpenSMTPD's (docs/configuration.md, metrics; docs/metrics.md).
    `address` is an IP literal in its normal form (no interface or host
    name: what the endpoint is reachable on is written down, never looked
    up); the parent binds it, the queue process answers on it.  None in
    Config when not written: then nothing is bound and nothing is counted
    across processes.
    """

    address: str
    port: int
    pos: Position


@dataclass(frozen=True, slots=True)
class TableUse:
    """A table used for a service (docs/tables.md) at `pos`: `userbase <users>` = userinfo.

    `service` is the service's config name ("alias", "userinfo", ...); the
    table layer checks that the table's backend can serve it.
    """

    table: str
    service: str
    pos: Position


@dataclass(frozen=True, slots=True)
class Feature:
    """One option a config uses, as `support.unsupported()` names it.

    `name` is the option in the manual's words ("listen tls", "action mbox",
    "match from rdns", "queue ttl"); `pos` is where it was written.
    """

    name: str
    pos: Position


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
    queue: QueueOptions = field(default_factory=QueueOptions)
    bounce: BounceOptions = field(default_factory=BounceOptions)
    mta: MtaOptions = field(default_factory=MtaOptions)
    mda: MdaOptions = field(default_factory=MdaOptions)
    scheduler: SchedulerOptions = field(default_factory=SchedulerOptions)
    processes: ProcessOptions = field(default_factory=ProcessOptions)
    metrics: MetricsDecl | None = None      # `metrics listen on`: None = no endpoint
    grammar: str = field(default="modern", compare=False)  # "modern" | "2012": how rules were written
    #: Every option written, with its position, for `support.unsupported()`.
    #: Not part of equality: two configs saying the same thing are equal.
    features: tuple[Feature, ...] = field(default=(), compare=False)
    #: Every table reference with the service it needs (docs/tables.md, Services and value formats).
    table_uses: tuple[TableUse, ...] = field(default=(), compare=False)
