"""`postillion route ADDRESS`: where mail to one address would go, and why.

Postillion's `exim -bt` (OpenSMTPD has none).  It answers with the
daemon's own code, never a copy of it: the SMTP machine parses the
addresses (`smtp/protocol.py`, so a malformed one gets the session's
`501`), `smtp.recipients.rcpt_decision` runs the rules and the expansion as
RCPT does (its reply is the one a client would get), the expansion records
each step it takes (`lookup.expand.Step`), and each final delivery is
resolved as the queue process resolves it: `Daemon.delivery_user`,
`mda.jobs.build_job` and the format expansion of its path or command,
`daemon.lmtp_job`, or, for a relay, the MTA's smarthost table, `relay_for`,
its DNS (`mta nameserver` included) and its route table's host order.

Read-only: the tables are opened as `check` opens them and the DNS is
asked; nothing is queued, delivered or written, and the spool is never
opened.  A `.forward` is read in this process, so when not run as root a
home it cannot enter is reported as such (the daemon reads it as root).
Rendering (text and JSON) is in `daemon/routing_show.py`.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from postillion.config.model import ActionDecl, Config, MatchDecl
from postillion.daemon import Daemon, StartupError, lmtp_job
from postillion.errors import MailError, PermFail, Reply, TempFail
from postillion.lookup.expand import Delivery, Step, local_forward
from postillion.lookup.forward import ForwardUnusable
from postillion.mda.agent import file_path, maildir_path, mbox_path
from postillion.mda.jobs import build_job, job_method
from postillion.queue.envelope import Envelope, new_msgid
from postillion.rules import SessionFacts, is_local_address
from postillion.smtp import protocol as p
from postillion.smtp.recipients import rcpt_decision, session_address
from postillion.table.services import Service
from postillion.table.values import Userinfo

if TYPE_CHECKING:
    from postillion.mta.dns import MxResolver

#: The MAIL FROM of the explained session when --from is not given: the
#: null sender, so the answer does not depend on who runs the command.
DEFAULT_SENDER: Final = ""
#: The HELO the explained session gives (never looked at by the rules).
HELO_NAME: Final = "route.invalid"
#: The spool path handed to the Daemon object: never opened (as `check`).
NO_SPOOL: Final = Path("/nonexistent")

EXIT_DELIVERABLE: Final = 0
EXIT_REFUSED: Final = 1
EXIT_TEMPORARY: Final = 2


class RouteError(Exception):
    """The question cannot be asked: a bad --src, a configuration or table
    the daemon would refuse.  Exit 2."""


@dataclass(frozen=True, slots=True)
class Question:
    """The facts of the explained session (docs/commands.md, route)."""

    address: str
    sender: str = DEFAULT_SENDER
    src: str | None = None          # the client's IP; None: a local client
    auth: str | None = None         # the AUTH user, None: not authenticated
    tls: bool = False


@dataclass(slots=True)
class RelayPlan:
    """Where a relayed delivery goes, as the mta process would try it."""

    target: str                     # the domain, or the smarthost's URL
    smarthost: bool
    scheme: str
    port: int | None
    verify: bool
    auth_table: str | None = None
    auth_label: str | None = None
    helo: str = ""
    mail_from: str | None = None    # the action's mail-from, replacing the sender
    sources: list[str] = field(default_factory=list)
    #: (preference, MX or host name, addresses), in the order tried.
    hosts: list[tuple[int, str, list[str]]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)   # addresses an `mta limit inet*` drops


@dataclass(slots=True)
class Resolved:
    """One final delivery, resolved: how, as whom, to where."""

    delivery: Delivery
    method: str                     # maildir, mbox, file, mda, lmtp, relay
    user: Userinfo | None = None
    path: str = ""                  # maildir, mbox, file: the path after format expansion
    command: str = ""               # mda: the alias target or action command as written
    argv: tuple[str, ...] = ()      # mda: the words run (no shell)
    lmtp: tuple[str, str] | None = None   # (destination, RCPT TO)
    relay: RelayPlan | None = None
    error: MailError | None = None
    junk: bool = False              # maildir junk: spam goes to its .Junk folder


@dataclass(slots=True)
class Explanation:
    """Everything `postillion route` says about one address."""

    question: Question
    facts: SessionFacts
    sender: str = ""
    rcpt: str = ""
    stage: str = "RCPT"             # the command whose reply decided: MAIL or RCPT
    reply: Reply | None = None
    reason: str = ""                # the administrator's why, when refused
    rule: MatchDecl | None = None
    rule_text: str = ""
    action: ActionDecl | None = None
    tree: Step | None = None
    finals: list[Resolved] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 deliverable; 1 refused for good (5xx, or a delivery that would
        fail permanently); 2 temporary (4xx, or a delivery that would wait)."""
        if self.reply is None or self.reply.code >= 400:
            return EXIT_REFUSED if self.reply is not None and self.reply.code >= 500 \
                else EXIT_TEMPORARY
        if any(isinstance(f.error, TempFail) for f in self.finals):
            return EXIT_TEMPORARY
        if any(f.error is not None for f in self.finals):
            return EXIT_REFUSED
        return EXIT_DELIVERABLE


def session_facts(question: Question) -> SessionFacts:
    """The rules' view of the session: `from local` unless --src, `auth` with --auth."""
    address, local = "local", True
    if question.src is not None:
        try:
            address = str(ipaddress.ip_address(question.src))
        except ValueError:
            raise RouteError(f"--src {question.src!r}: not an IP address") from None
        local = is_local_address(address, "")
    return SessionFacts(address=address, is_local=local, authenticated=question.auth is not None,
                        user=question.auth or "", tls=question.tls)


def parse_paths(hostname: str, sender: str, address: str) -> tuple[str, str] | tuple[str, Reply]:
    """MAIL FROM and RCPT TO through the session's own SMTP machine:
    (sender, rcpt) as the session looks them up, or (command, refusal)."""
    if any(ch in "\r\n\0" for ch in sender + address):
        raise RouteError("an address holds a line break or NUL")
    proto = p.ServerProtocol(hostname, "127.0.0.1", features=p.ALL_EXTENSIONS)
    proto.send_banner()
    utf8 = "" if (sender + address).isascii() else " SMTPUTF8"
    proto.receive_data(f"EHLO {HELO_NAME}\r\nMAIL FROM:<{sender}>{utf8}\r\n"
                       f"RCPT TO:<{address}>\r\n".encode("utf-8", "surrogateescape"))
    found_sender = ""
    while True:
        event = proto.next_event()
        if isinstance(event, p.Helo):
            proto.send(proto.helo_reply(event))
        elif isinstance(event, p.MailFrom):
            found_sender = session_address(event.sender, hostname) if event.sender else ""
            proto.send(p.OK)
        elif isinstance(event, p.RcptTo):
            return found_sender, session_address(event.rcpt, hostname)
        elif isinstance(event, p.CommandRejected):
            return event.command.split(" ", 1)[0].upper(), event.reply
        else:                      # the machine wants more: it never does here
            raise RouteError(f"the SMTP machine stopped at {event!r}")


class Explainer:
    """One configuration's answers, built as the daemon builds its parts."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.daemon = Daemon(config, NO_SPOOL)
        self.daemon.read_forward = self._read_forward
        self._notes: list[str] = []
        self._resolver: MxResolver | None = None     # made at the first relay

    async def __aenter__(self) -> Explainer:
        try:
            await self.daemon.prepare_routing()
        except StartupError as e:
            await self.daemon.stop()
            raise RouteError(str(e)) from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.daemon.stop()        # the tables, the AUTH pool: nothing left running

    async def _read_forward(self, user: Userinfo) -> str | None:
        """The `.forward` as the expansion reads it; one this process may
        not read (not root) is said so, and stays the failure it is."""
        try:
            return await local_forward(user)
        except ForwardUnusable as e:
            if os.geteuid() != 0 and os.strerror(errno.EACCES) in e.reason:
                self._notes.append(
                    f"{e.reason}: route runs as uid {os.geteuid()}, the daemon reads "
                    f".forward files as root; run route as root to see what it sees")
            raise

    async def explain(self, question: Question) -> Explanation:
        facts = session_facts(question)
        out = Explanation(question, facts)
        self._notes = out.notes
        ctx = self.daemon.local_ctx
        assert ctx is not None
        parsed = parse_paths(self.config.hostname, question.sender, question.address)
        if isinstance(parsed[1], Reply):
            out.stage, out.reply = parsed[0], parsed[1]
            return out
        out.sender, out.rcpt = parsed
        out.tree = Step("rcpt", out.rcpt)
        decision = await rcpt_decision(ctx.ruleset, ctx.expander, facts, out.sender, out.rcpt,
                                       out.tree)
        out.reply, out.reason, out.rule = decision.reply, decision.reason, decision.rule
        if decision.rule is not None:
            from postillion.config.normal import match_text
            out.rule_text = match_text(self.config, decision.rule)
            out.action = ctx.ruleset.action_of(decision.rule)
        for delivery in decision.deliveries:
            out.finals.append(await self.resolve(delivery, out.sender, out.rcpt))
        return out

    async def resolve(self, delivery: Delivery, sender: str, rcpt: str) -> Resolved:
        """One delivery as the queue process would make it (Daemon.dispatch)."""
        action = self.config.actions[delivery.dispatcher]
        if delivery.agent == "mta":
            final = Resolved(delivery, "relay")
            try:
                final.relay = await self.relay_plan(action, delivery.dest, sender)
            except MailError as e:
                final.error = e
            return final
        env = Envelope.new(new_msgid(), dispatcher=delivery.dispatcher, rcpt=rcpt,
                           dest=delivery.dest, sender=sender, mda_user=delivery.user,
                           mda_subaddress=delivery.subaddress, mda_exec=delivery.exec)
        method = job_method(env, action)
        final = Resolved(delivery, method)
        try:
            if method not in self.daemon.local_methods:
                raise PermFail(Reply(550, "5.3.5", f"action {action.name} cannot deliver locally"))
            final.user = await self.daemon.delivery_user(env, action)
            if method == "lmtp":
                job = lmtp_job(action, env, final.user)
                final.lmtp = (job.destination, job.rcpt_to)
                return final
            job = build_job(env, action, final.user, message=NO_SPOOL, prefix=b"", name=None,
                            wrappers=dict(self.config.mda.wrappers),
                            sub_addr_delim=self.config.limits.sub_addr_delim)
            if method == "maildir":
                final.path = str(maildir_path(job))
                final.junk = action.junk and not env.mda_exec
            elif method == "file":
                final.path = str(file_path(job))
            elif method == "mbox":
                final.path = mbox_path(job, self.config.mda.mbox_directory)
            else:
                final.command = env.mda_exec or (action.command or "")
                final.argv = job.argv
        except MailError as e:
            final.error = e
        return final

    async def relay_plan(self, action: ActionDecl, dest: str, sender: str) -> RelayPlan:
        """The relay, its TLS and AUTH, its hosts in the order tried: the
        mta process's own steps (mta/agent.py), stopped before connecting."""
        # Imported here, as the daemon does: only a relay needs the DNS library.
        from postillion.mta.agent import make_resolver, relay_hosts, relay_sources, smarthost
        from postillion.mta.limits import limits_for
        from postillion.mta.relay import relay_for
        from postillion.mta.routes import MtaState, RouteTable
        tables = self.daemon.tables
        domain = dest.rpartition("@")[2]
        relay = relay_for(action, domain, relayhost=await smarthost(tables, action, domain),
                          hostname=self.config.hostname)
        plan = RelayPlan(str(relay), relay.as_host, relay.scheme, relay.effective_port,
                         relay.verify, relay.auth, relay.label,
                         helo=relay.helo or self.config.hostname, mail_from=action.mail_from)
        if relay.helo_src:
            plan.helo = f"per source address from <{relay.helo_src}>, else {plan.helo}"
        if relay.label is not None and relay.auth is not None:
            if await tables[relay.auth].lookup(Service.CREDENTIALS, relay.label) is None:
                raise TempFail(Reply(451, "4.7.0", "No credentials for relay label"),
                               f"no credentials for label {relay.label!r} in table {relay.auth!r}")
        plan.sources = await relay_sources(tables, relay)
        if self._resolver is None:
            self._resolver = make_resolver(self.config)
        limits = limits_for(self.config.mta, None if relay.as_host else relay.domain)
        routes = RouteTable(relay, limits, MtaState())
        routes.set_hosts(await relay_hosts(self._resolver, relay))
        for host in routes.hosts:
            if not (limits.inet4 if host.family == 4 else limits.inet6):
                plan.skipped.append(host.address)
                continue
            if plan.hosts and plan.hosts[-1][:2] == (host.preference, host.name):
                plan.hosts[-1][2].append(host.address)
            else:
                plan.hosts.append((host.preference, host.name, [host.address]))
        return plan


async def explain(config: Config, question: Question) -> Explanation:
    """Explain one address under `config`; RouteError when it cannot be asked."""
    async with Explainer(config) as explainer:
        return await explainer.explain(question)
