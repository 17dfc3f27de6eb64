"""The normalised model (`check -v`), semantic equality, and `check --convert`.

Two configs are compared through plain data, never through the dataclasses
themselves, because what makes them "the same" is not what makes two
objects equal:

- `normalise(config)`: the model without positions or the file's path, and
  with anonymous tables (`from src 10.0.0.0/8`, `for domain { a, b }`)
  written inline where they are used -- their generated names carry a
  position.  `parse(to_modern(c))` normalises equal to `c`: that is the
  `--convert` round trip.
- `semantic(config)`: `normalise` minus the names of actions (each match
  carries its action's content instead; a 2012 `legacy-…` action and a
  hand-named modern one are then interchangeable) and with the 2012
  four-field userinfo values of inline userbase tables (`vuser:10:100:/home`)
  rewritten to the three-field form they mean (docs/tables.md).  The example
  configurations B and C (tests/config/examples) are compared this way.

`to_modern(config)` prints any config, whichever grammar it was written in,
in the modern grammar, every value quoted.  The one thing without a modern
spelling is the 2012 `ssl://` relay scheme (STARTTLS on 25, else TLS on
465): converting it raises `ConvertError` rather than changing what the
config means.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from postillion.config.model import (
    ActionDecl,
    BounceOptions,
    Config,
    Criterion,
    Limits,
    ListenDecl,
    MatchDecl,
    MdaOptions,
    MtaOptions,
    ProcessOptions,
    QueueOptions,
    RelayHost,
    SchedulerOptions,
    TableDecl,
)
from postillion.config.values import duration_text

ANON_PREFIX = "anon:"


class ConvertError(Exception):
    """A config that has no faithful modern spelling (2012 `ssl://`)."""


# -- normal form ----------------------------------------------------------------


def _table_data(decl: TableDecl) -> dict[str, Any]:
    if decl.config is not None or decl.backend != "static":
        return {"backend": decl.backend, "config": decl.config}
    if decl.is_map:
        return {"map": [list(p) for p in decl.pairs]}
    return {"list": list(decl.items)}


def _fields(obj: Any, skip: tuple[str, ...] = ("pos",)) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        if isinstance(value, RelayHost):
            value = dataclasses.asdict(value)
        elif isinstance(value, tuple):
            value = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else
                     (list(v) if isinstance(v, tuple) else v) for v in value]
        out[f.name] = value
    return out


class _Normaliser:
    def __init__(self, config: Config) -> None:
        self.config = config

    def ref(self, name: str | None) -> Any:
        """A table reference: its name, or the inline content of an anonymous table."""
        if name is None or not name.startswith(ANON_PREFIX):
            return name
        return {"inline": _table_data(self.config.tables[name])}

    def action(self, a: ActionDecl) -> dict[str, Any]:
        out = _fields(a, ("pos", "name"))
        for key in ("alias", "virtual", "userbase", "host_table", "domain", "auth",
                    "helo_src", "src"):
            out[key] = self.ref(out[key])
        return out

    def criterion(self, c: Criterion) -> dict[str, Any]:
        return {"kind": c.kind, "negate": c.negate, "table": self.ref(c.table),
                "regex": c.regex}

    def listener(self, listen: ListenDecl) -> dict[str, Any]:
        return _fields(listen)

    def whole(self) -> dict[str, Any]:
        c = self.config
        return {
            "hostname": c.hostname,
            "limits": _fields(c.limits),
            "queue": _fields(c.queue),
            "bounce": _fields(c.bounce),
            "mta": _fields(c.mta),
            "mda": _fields(c.mda),
            "scheduler": _fields(c.scheduler),
            "processes": _fields(c.processes),
            "metrics": _fields(c.metrics) if c.metrics is not None else None,
            "tables": {n: _table_data(t) for n, t in c.tables.items()
                       if not n.startswith(ANON_PREFIX)},
            "pkis": {n: _fields(p, ("pos", "name")) for n, p in sorted(c.pkis.items())},
            "cas": {n: _fields(p, ("pos", "name")) for n, p in sorted(c.cas.items())},
            "listeners": [self.listener(listen) for listen in c.listeners],
            "actions": {n: self.action(a) for n, a in c.actions.items()},
            "matches": [{"criteria": [self.criterion(x) for x in m.criteria],
                         "action": m.action} for m in c.matches],
        }


def normalise(config: Config) -> dict[str, Any]:
    """The model as plain data: no positions, no path, anonymous tables inline."""
    return _Normaliser(config).whole()


def _userinfo_3(key: str, value: str) -> str:
    """`user:uid:gid:home` (2012) -> `uid:gid:home` when user is the key."""
    parts = value.split(":")
    if len(parts) >= 4 and parts[0].lower() == key.lower() and parts[1].isdigit() \
            and parts[2].isdigit() and parts[3].startswith("/"):
        return ":".join(parts[1:])
    return value


def semantic(config: Config) -> dict[str, Any]:
    """`normalise` with actions identified by content, not name (see module doc)."""
    out = normalise(config)
    userbases = {a.userbase for a in config.actions.values() if a.userbase}
    for name in userbases:
        data = out["tables"].get(name)
        if data and "map" in data:
            data["map"] = [[k, _userinfo_3(k, v)] for k, v in data["map"]]
    actions = out.pop("actions")
    for m in out["matches"]:
        m["action"] = actions[m["action"]] if m["action"] is not None else None
    out["actions"] = sorted((repr(sorted(a.items())) for a in actions.values()))
    return out


# -- the modern grammar --------------------------------------------------------------


def q(text: str) -> str:
    """A value in double quotes that the lexer reads back as exactly `text`.

    Inside quotes `\\` escapes the quote, a blank or a newline and is kept
    before anything else; so `"` is written `\\"`, and a backslash before a
    blank is doubled (the first is kept, the second escapes the blank).  A
    value ending in a backslash, or holding a newline, has no quoted spelling:
    ConvertError.
    """
    if text.endswith("\\") or "\n" in text:
        raise ConvertError(f"the value {text!r} cannot be written back in quotes")
    out = []
    for i, ch in enumerate(text):
        if ch == '"':
            out.append('\\"')
        elif ch == "\\" and text[i + 1] in " \t":
            out.append("\\\\")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _table_name(name: str) -> str:
    simple = name and all(ch.isalnum() or ch in "_-." for ch in name)
    return name if simple else q(name)


class _Writer:
    def __init__(self, config: Config) -> None:
        self.c = config
        self.lines: list[str] = []

    def inline(self, decl: TableDecl) -> str:
        if decl.is_map:
            return "{ " + ", ".join(f"{q(k)} = {q(v)}" for k, v in decl.pairs) + " }"
        return "{ " + ", ".join(q(i) for i in decl.items) + " }"

    def value(self, name: str) -> str:
        """`<t>`, or an anonymous table as one quoted value or `{ ... }`."""
        if not name.startswith(ANON_PREFIX):
            return f"<{_table_name(name)}>"
        decl = self.c.tables[name]
        if not decl.is_map and len(decl.items) == 1:
            return q(decl.items[0])
        return self.inline(decl)

    def globals(self) -> None:
        c = self.c
        if any(f.name == "hostname" for f in c.features):
            self.lines.append(f"hostname {q(c.hostname)}")
        d = Limits()
        lim = c.limits
        if lim.max_message_size != d.max_message_size:
            self.lines.append(f"smtp max-message-size {lim.max_message_size}")
        for word, attr in (("max-mails", "max_mails"), ("max-rcpt", "max_rcpt"),
                           ("max-sessions", "max_sessions"),
                           ("max-sessions-per-ip", "max_sessions_per_ip")):
            if getattr(lim, attr) != getattr(d, attr):
                self.lines.append(f"smtp limit {word} {getattr(lim, attr)}")
        if lim.sub_addr_delim != d.sub_addr_delim:
            self.lines.append(f"smtp sub-addr-delim {q(lim.sub_addr_delim)}")
        if lim.ciphers != d.ciphers:
            self.lines.append(f"smtp ciphers {q(lim.ciphers)}")
        dp = ProcessOptions()
        if c.processes.smtp_workers != dp.smtp_workers:
            self.lines.append(f"smtp workers {c.processes.smtp_workers}")
        if c.queue.ttl != QueueOptions().ttl:
            self.lines.append(f"queue ttl {duration_text(c.queue.ttl)}")
        if c.queue.compression:
            self.lines.append("queue compression")
        if lim.queue_min_free != d.queue_min_free:
            self.lines.append(f"queue min-free {lim.queue_min_free}")
        if c.processes.queue_user != dp.queue_user:
            self.lines.append(f"queue user {q(c.processes.queue_user)}")
        if c.bounce != BounceOptions():
            self.lines.append("bounce warn-interval "
                              + ",".join(duration_text(x) for x in c.bounce.warn_interval))
        if c.mta.max_deferred != MtaOptions().max_deferred:
            self.lines.append(f"mta max-deferred {c.mta.max_deferred}")
        for address, port in c.mta.nameservers:
            self.lines.append(f"mta nameserver {address}" + (f" port {port}" if port != 53 else ""))
        for limit in c.mta.limits:
            where = f"for domain {q(limit.domain)} " if limit.domain else ""
            if limit.key == "family":
                self.lines.append(f"mta limit {where}inet{limit.value}")
            else:
                self.lines.append(f"mta limit {where}{limit.key} {limit.value}")
        dm = MdaOptions()
        if c.mda.max_session != dm.max_session:
            self.lines.append(f"mda limit max-session {c.mda.max_session}")
        if c.mda.max_session_per_user != dm.max_session_per_user:
            self.lines.append(f"mda limit max-session-per-user {c.mda.max_session_per_user}")
        for name, cmd in c.mda.wrappers:
            self.lines.append(f"mda wrapper {q(name)} {q(cmd)}")
        if c.scheduler != SchedulerOptions():
            self.lines.append(f"scheduler limit max-inflight {c.scheduler.max_inflight}")
        if c.metrics is not None:
            self.lines.append(f"metrics listen on {c.metrics.address} port {c.metrics.port}")

    def tables(self) -> None:
        for name, decl in self.c.tables.items():
            if name.startswith(ANON_PREFIX):
                continue
            if decl.config is None and decl.backend == "static":
                self.lines.append(f"table {_table_name(name)} {self.inline(decl)}")
            else:
                self.lines.append(f"table {_table_name(name)} "
                                  f"{q(decl.backend + ':' + (decl.config or ''))}")

    def pkis(self) -> None:
        for name, pki in self.c.pkis.items():
            for part in ("cert", "key", "dhe"):
                value = getattr(pki, part)
                if value is not None:
                    self.lines.append(f"pki {q(name)} {part} {q(value)}")
        for name, ca in self.c.cas.items():
            self.lines.append(f"ca {q(name)} cert {q(ca.cert)}")

    def listener(self, listen: ListenDecl) -> None:
        words = [f"listen on {q(listen.address)}"]
        if listen.family:
            words.append(listen.family)
        if listen.port is not None:
            words.append(f"port {listen.port}")
        if listen.smtps:
            words.append("smtps" + (" verify" if listen.verify else ""))
        elif listen.tls_require:
            words.append("tls-require" + (" verify" if listen.verify else ""))
        elif listen.tls:
            words.append("tls")
        words += [f"pki {q(p)}" for p in listen.pki]
        if listen.ca:
            words.append(f"ca {q(listen.ca)}")
        if listen.auth:
            words.append("auth" if listen.auth == "required" else "auth-optional")
            if listen.auth_table:
                words.append(f"<{_table_name(listen.auth_table)}>")
        if listen.insecure_auth:
            words.append("insecure-auth")
        if listen.hostname:
            words.append(f"hostname {q(listen.hostname)}")
        if listen.hostnames:
            words.append(f"hostnames <{_table_name(listen.hostnames)}>")
        if listen.senders:
            words.append(f"senders <{_table_name(listen.senders)}>"
                         + (" masquerade" if listen.masquerade else ""))
        if listen.tag:
            words.append(f"tag {q(listen.tag)}")
        for flag in ("mask_src", "no_dsn", "received_auth"):
            if getattr(listen, flag):
                words.append(flag.replace("_", "-"))
        self.lines.append(" ".join(words))

    def action(self, a: ActionDecl) -> None:
        words = [f"action {q(a.name)} {a.method}"]
        if a.path is not None:
            words.append(q(a.path))
        if a.command is not None:
            words.append(q(a.command))
        if a.destination is not None:
            words.append(q(a.destination))
        if a.junk:
            words.append("junk")
        if a.rcpt_to:
            words.append("rcpt-to")
        for opt in ("alias", "virtual", "userbase"):
            if getattr(a, opt):
                words.append(f"{opt} {self.value(getattr(a, opt))}")
        for opt in ("user", "wrapper"):
            if getattr(a, opt):
                words.append(f"{opt} {q(getattr(a, opt))}")
        if a.host is not None:
            if a.host.scheme == "ssl":
                raise ConvertError(f"{a.pos}: the 2012 relay scheme ssl:// (STARTTLS on 25, "
                                   "else TLS on 465) has no modern spelling; write "
                                   "smtp+tls:// or smtps:// in the 2012 rule first")
            words.append(f"host {q(a.host.url())}")
        if a.host_table:
            words.append(f"host {self.value(a.host_table)}")
        if a.domain:
            words.append(f"domain {self.value(a.domain)}")
        if a.backup:
            words.append("backup" + (f" mx {q(a.backup_mx)}" if a.backup_mx else ""))
        if a.tls:
            words.append("tls" + (" no-verify" if a.no_verify else ""))
        if a.auth:
            words.append(f"auth {self.value(a.auth)}")
        if a.helo:
            words.append(f"helo {q(a.helo)}")
        if a.helo_src:
            words.append(f"helo-src {self.value(a.helo_src)}")
        if a.src:
            words.append(f"src {self.value(a.src)}")
        if a.mail_from:
            words.append(f"mail-from {q(a.mail_from)}")
        if a.pki:
            words.append(f"pki {q(a.pki)}")
        if a.ca:
            words.append(f"ca {q(a.ca)}")
        if a.ttl is not None:
            words.append(f"ttl {duration_text(a.ttl)}")
        self.lines.append(" ".join(words))

    def criterion(self, c: Criterion) -> str:
        side, _, what = c.kind.partition("-")
        words = ["!" if c.negate else ""]
        if side in ("from", "for"):
            words.append(f"{side} {what}")
        else:
            words.append(c.kind)
        if c.table is not None:
            words.append(("regex " if c.regex else "") + self.value(c.table))
        return words[0] + " ".join(words[1:])

    def match(self, m: Any) -> None:
        end = f"action {q(m.action)}" if m.action is not None else "reject"
        self.lines.append(" ".join(["match", *(self.criterion(c) for c in m.criteria), end]))

    def write(self) -> str:
        c = self.c
        source = "2012 accept/reject rules" if c.grammar == "2012" else "the modern grammar"
        self.lines.append(f"# {c.path}, converted by postillion check --convert from {source}")
        self.globals()
        self.tables()
        self.pkis()
        for listen in c.listeners:
            self.listener(listen)
        for a in c.actions.values():
            self.action(a)
        for m in c.matches:
            self.match(m)
        return "\n".join(self.lines) + "\n"


def to_modern(config: Config) -> str:
    """The config in the modern grammar; parses back to an equal `normalise` form.

    Raises ConvertError for the 2012 `ssl://` scheme (no modern spelling).
    """
    return _Writer(config).write()


def match_text(config: Config, rule: MatchDecl) -> str:
    """One `match` rule in the modern grammar, as `--convert` writes it
    (`postillion route` names the rule that decided)."""
    writer = _Writer(config)
    writer.match(rule)
    return writer.lines[-1]
