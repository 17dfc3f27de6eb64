"""Recipient expansion: one RCPT address into final local deliveries.

Runs at RCPT time (docs/tables.md, Recipient expansion) so an unknown recipient is refused with
`550 5.1.1` before any data is sent, instead of being accepted and bounced
later (backscatter).  Expansion is breadth-first over nodes that know their
parent and depth:

* an *address* node (`user@domain`) is looked up in the action's `virtual`
  table (keys `user+tag@dom`, `user@dom`, `user+tag`, `user`, `@dom`, `@`);
  without one it becomes a user node;
* a *user* node is looked up in the `alias`/`virtual` table (keys
  `user+tag`, `user`) unless it names its parent (the loop guard), else it
  must exist in the userbase; then its `~/.forward`, if it has one
  (lookup/forward.py), replaces it by the targets it lists;
* targets (docs/tables.md, Alias targets): `error:` answers the RCPT with
  its reply; `:include:/path` (not from a `.forward`) is read and expanded
  in place; `|command`, `/path/` (a Maildir) and `/path` (an mbox file) are
  final deliveries of their own (`Delivery.exec`), run as the queue user
  when an alias table named them and as the user when their `.forward` did;
  an address goes through the rules again; a user is a user node.

`forward-only` actions deliver only through `.forward` files: a user
without one, or a file or command target, is a temporary failure.
`expand-only` actions deliver only what aliases and `.forward` files name:
a user without a `.forward` is a permanent one.

Depth is bounded by `Limits.expand_depth` (10) and the fan-out by
MAX_TARGETS: beyond, or nothing left to deliver, answers `550 5.2.4`; a node
seen before is not expanded twice, and a delivery reached twice is made
once.  A table that cannot answer raises `LookupUnavailable` (`451 4.3.0`),
an unusable `.forward` or `:include:` a temporary failure (`451 4.2.4`), and
no partial list is ever returned.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from postillion.config.model import ActionDecl, Limits
from postillion.errors import MailError, PermFail, Reply, TempFail
from postillion.lookup.forward import ForwardUnusable, parse_targets, read_forward, read_include
from postillion.table.services import Service
from postillion.table.table import Table, open_table
from postillion.table.values import BadValue, ExpandList, Userinfo, error_target, target_kind

#: Re-runs the rules for an address found in an alias ("through the
#: rules again"); returns the action, or None when no rule accepts it.
RouteAddress = Callable[[str], Awaitable[ActionDecl | None]]
#: Reads a user's `.forward`: its text, None when absent or empty; raises
#: TempFail when it is unusable.  The daemon asks its root parent.
ReadForward = Callable[[Userinfo], Awaitable[str | None]]

_USERNAME = re.compile(r"[A-Za-z0-9_.+-]+\Z")
MAX_TARGETS = 1000  # a bound on the fan-out of one expansion, against table loops


@dataclass(frozen=True, slots=True)
class Delivery:
    """One final delivery: the envelope the queue will hold for it.

    `agent` is the envelope's type: "mda" for a local delivery, "mta" for an
    address a `relay` action sends on (then `user` is empty: nobody's
    account is involved, and the address is relayed as it was found).
    `exec` is the envelope's `mda-exec`: a `|command`, `/path/` or `/path`
    target, delivered that way instead of by the action's method; its
    `user` is the one whose `.forward` named it, or empty when an alias
    table did (then it runs as the queue user).
    """

    dispatcher: str        # the action's name
    user: str              # userbase name the agent delivers as ("" to relay)
    dest: str              # the expanded address (user@domain)
    subaddress: str = ""   # the `+tag`, kept for delivery-time use
    agent: Literal["mda", "mta"] = "mda"
    ttl: float | None = None  # the action's `ttl` (None: `queue ttl`)
    exec: str = ""         # mda-exec: an alias or .forward file/command target

    @property
    def key(self) -> tuple[str, str, str]:
        """What makes two deliveries the same one: a command or file once per
        user that runs it, a mailbox once per address."""
        return (self.dispatcher, self.user, self.exec or self.dest)


@dataclass(slots=True, eq=False)
class Step:
    """One step of an expansion as `postillion route` shows it
    (docs/commands.md, route), recorded only when a caller asks for it.

    `kind`: "address", "user" (a node expanded), "include" (an
    `:include:` file), "forward" (a `.forward` read), "target" (an alias
    target that ended the expansion: `error:`), "delivery" (a final
    delivery, `delivery` set).  `detail` says how it was expanded (which
    table and key, the userbase entry); `error` is the failure met here.
    """

    kind: str
    value: str
    action: str = ""
    detail: str = ""
    delivery: Delivery | None = None
    error: MailError | None = None
    children: list[Step] = field(default_factory=list)

    def add(self, kind: str, value: str, **fields: object) -> Step:
        child = Step(kind, value, **fields)  # type: ignore[arg-type]
        self.children.append(child)
        return child

    def note(self, text: str) -> None:
        self.detail = f"{self.detail}; {text}" if self.detail else text

    def holds(self, error: MailError) -> bool:
        """Whether this step or one below it already records `error`."""
        return self.error is error or any(child.holds(error) for child in self.children)


@dataclass(frozen=True, slots=True)
class _Node:
    kind: str              # "address" | "user"
    value: str
    action: ActionDecl
    depth: int
    domain: str
    parent_user: str = ""
    step: Step | None = field(default=None, compare=False)  # when traced


@dataclass(frozen=True, slots=True)
class _Source:
    """Where a list of targets came from: an alias table (or an :include:
    of one), or the `.forward` of `owner`; `dest` is the address expanded."""

    dest: str
    forward: bool = False
    owner: str = ""


def invalid_recipient(rcpt: str) -> PermFail:
    return PermFail(Reply(550, "5.1.1", f"Invalid recipient: <{rcpt}>"))


def expansion_problem(rcpt: str, reason: str, temporary: bool = False) -> MailError:
    if temporary:
        return TempFail(Reply(451, "4.2.4", f"Mailing list expansion problem: <{rcpt}>"), reason)
    return PermFail(Reply(550, "5.2.4", f"Mailing list expansion problem: <{rcpt}>"), reason)


def split_tag(local: str, delim: str) -> tuple[str, str]:
    """`user+tag` -> (`user`, `tag`); no delimiter -> (local, "")."""
    if delim and delim in local:
        user, _, tag = local.partition(delim)
        if user:
            return user, tag
    return local, ""


def virtual_keys(local: str, domain: str, delim: str) -> list[str]:
    """The `virtual` lookup order (docs/tables.md, Recipient expansion), first hit wins."""
    user, tag = split_tag(local, delim)
    keys = []
    if tag:
        keys.append(f"{local}@{domain}")
    keys.append(f"{user}@{domain}")
    if tag:
        keys.append(local)
    keys += [user, f"@{domain}", "@"]
    return keys


def alias_keys(local: str, delim: str) -> list[str]:
    user, tag = split_tag(local, delim)
    return [local, user] if tag else [user]


async def local_forward(user: Userinfo) -> str | None:
    """Read the `.forward` here (in a thread): the daemon in one process."""
    return await asyncio.to_thread(read_forward, user.home, user.uid)


class Expander:
    """Expands recipients against the live tables of one configuration.

    `forward` reads a user's `.forward` (the smtp processes ask the root
    parent, which alone may open every home); `include` reads an
    `:include:` file (here, as whoever runs the expansion)."""

    def __init__(self, tables: Mapping[str, Table], limits: Limits, route: RouteAddress,
                 forward: ReadForward = local_forward) -> None:
        self._tables = tables
        self._limits = limits
        self._route = route
        self._forward = forward

    async def expand(self, rcpt: str, action: ActionDecl, trace: Step | None = None) -> list[Delivery]:
        """The final deliveries of `rcpt` under `action`; each node expanded
        is recorded under `trace` when given (`postillion route`)."""
        try:
            return await self._expand(rcpt, action, trace)
        except ForwardUnusable as e:
            raise expansion_problem(rcpt, e.reason, temporary=True) from None

    async def _expand(self, rcpt: str, action: ActionDecl, trace: Step | None) -> list[Delivery]:
        local, _, domain = rcpt.rpartition("@")
        step = trace.add("address", rcpt, action=action.name) if trace is not None else None
        queue = deque([_Node("address", rcpt, action, 0, domain.lower(), step=step)])
        deliveries: dict[tuple[str, str, str], Delivery] = {}
        expanded: set[tuple[str, str, str, str]] = set()
        seen = 0
        while queue:
            node = queue.popleft()
            seen += 1
            try:
                if node.depth > self._limits.expand_depth or seen > MAX_TARGETS:
                    raise expansion_problem(rcpt, f"expansion deeper than {self._limits.expand_depth}")
                once = (node.kind, node.value.lower(), node.action.name, node.parent_user)
                if once in expanded:
                    if node.step is not None:
                        node.step.note("expanded already (above)")
                    continue                 # reached again through another target
                expanded.add(once)
                if node.kind == "address" and node.action.method == "relay":
                    # Relayed as written: the next hop expands its own addresses.
                    relayed = Delivery(node.action.name, "", node.value, agent="mta",
                                       ttl=node.action.ttl)
                    if node.step is not None:
                        node.step.add("delivery", node.value, action=node.action.name,
                                      delivery=relayed)
                    found = [relayed]
                    children: list[_Node] = []
                elif node.kind == "address":
                    children, found = await self._address(node, rcpt)
                else:
                    children, found = await self._user(node, rcpt)
            except MailError as e:
                if node.step is not None and not node.step.holds(e):
                    node.step.error = e
                raise
            for delivery in found:
                deliveries.setdefault(delivery.key, delivery)
            queue.extend(children)
        if not deliveries:
            raise expansion_problem(rcpt, "nothing to deliver")
        return list(deliveries.values())

    async def _address(self, node: _Node, rcpt: str) -> tuple[list[_Node], list[Delivery]]:
        local, _, domain = node.value.rpartition("@")
        action = node.action
        if action.virtual is not None:
            found = await self._first(action.virtual,
                                      virtual_keys(local, domain.lower(), self._limits.sub_addr_delim))
            if found is None:
                if node.step is not None:
                    node.step.note(f"not in virtual <{action.virtual}>")
                raise invalid_recipient(rcpt)
            if node.step is not None:
                node.step.note(f"virtual <{action.virtual}> key {found[0]}")
            return await self._children(node, found[1].targets, rcpt, node.parent_user,
                                        _Source(node.value), node.step)
        step = node.step.add("user", local, action=action.name) if node.step is not None else None
        return [_Node("user", local, action, node.depth + 1, domain.lower(), node.parent_user,
                      step)], []

    async def _user(self, node: _Node, rcpt: str) -> tuple[list[_Node], list[Delivery]]:
        action = node.action
        name = node.value.lower()
        aliases = action.alias or action.virtual
        dest_of = (lambda user: f"{user}@{node.domain}" if node.domain else user)
        step = node.step
        if aliases is not None and name != node.parent_user:
            found = await self._first(aliases, alias_keys(name, self._limits.sub_addr_delim))
            if found is not None:
                if step is not None:
                    step.note(f"{'alias' if action.alias else 'virtual'} <{aliases}> key {found[0]}")
                return await self._children(node, found[1].targets, rcpt, name,
                                            _Source(dest_of(name)), step)
        user, tag = split_tag(name, self._limits.sub_addr_delim)
        info = await self._userinfo(action, user)
        userbase = f"userbase <{action.userbase or 'getpwnam'}>"
        if info is None:
            if step is not None:
                step.note(f"not in {userbase}")
            raise invalid_recipient(rcpt)
        if step is not None:
            step.note(f"{userbase}: {info.username} {info.uid}:{info.gid} {info.home}")
        dest = dest_of(user)
        # The loop guard (a user named by its own alias or .forward) is
        # delivered to its mailbox; root's .forward is never run.
        if name == node.parent_user and step is not None:
            step.note("named by its own alias or .forward: its mailbox")
        if name != node.parent_user and info.uid != 0:
            text = await self._forward(info)
            if text is not None:
                where = f"{info.home.rstrip('/')}/.forward"
                forward = step.add("forward", where) if step is not None else None
                try:
                    targets = parse_targets(text, where, forward=True)
                except MailError as e:
                    if forward is not None:
                        forward.error = e
                    raise
                return await self._children(node, targets, rcpt, user,
                                            _Source(dest, forward=True, owner=user), forward)
            if step is not None:
                step.note("no .forward")
        elif info.uid == 0 and step is not None:
            step.note("uid 0: its .forward is never read")
        if action.method == "forward-only":
            raise expansion_problem(rcpt, f"forward-only: no usable .forward for {user}",
                                    temporary=True)
        if action.method == "expand-only":
            raise expansion_problem(rcpt, f"expand-only: {user} has no .forward")
        delivery = Delivery(action.name, user, dest, tag, ttl=action.ttl)
        if step is not None:
            step.add("delivery", dest, action=action.name, delivery=delivery)
        return [], [delivery]

    async def _children(self, node: _Node, targets: tuple[str, ...], rcpt: str,
                        parent_user: str, source: _Source,
                        step: Step | None = None) -> tuple[list[_Node], list[Delivery]]:
        """The nodes and deliveries `targets` give; `step`, when traced,
        is where they are recorded."""
        children: list[_Node] = []
        deliveries: list[Delivery] = []
        pending = deque((node.depth + 1, t, step) for t in targets)
        count = 0
        while pending:
            depth, target, at = pending.popleft()
            count += 1
            if depth > self._limits.expand_depth or count > MAX_TARGETS:
                raise expansion_problem(rcpt, f"expansion deeper than {self._limits.expand_depth}")
            try:
                kind = self._kind(target, rcpt)
            except MailError as e:
                if at is not None:
                    at.add("target", target, error=e)
                raise
            if kind == "include":
                include = at.add("include", target) if at is not None else None
                try:
                    if source.forward:
                        raise ForwardUnusable(":include: is not allowed in a .forward")
                    path = target[len(":include:"):].strip()
                    text = await asyncio.to_thread(read_include, path)
                    pending.extend((depth + 1, t, include) for t in
                                   parse_targets(text, f":include:{path}", forward=False))
                except MailError as e:
                    if include is not None:
                        include.error = e
                    raise
            elif kind in ("command", "file"):
                delivery = self._exec(node.action, target, rcpt, source)
                if at is not None:
                    at.add("delivery", target, action=node.action.name, delivery=delivery)
                deliveries.append(delivery)
            else:
                children.append(await self._target(node, target, rcpt, parent_user, depth, at))
        return children, deliveries

    @staticmethod
    def _kind(target: str, rcpt: str) -> str:
        try:
            kind = target_kind(target)
            if kind == "error":
                raise _error_reply(*error_target(target))
        except BadValue:
            raise expansion_problem(rcpt, "malformed error: target") from None
        return kind

    @staticmethod
    def _exec(action: ActionDecl, target: str, rcpt: str, source: _Source) -> Delivery:
        """A `|command` or `/path` target: a delivery of its own."""
        if action.method == "forward-only":
            raise expansion_problem(rcpt, f"forward-only: {target_kind(target)} target",
                                    temporary=True)
        if action.method == "relay":
            raise expansion_problem(rcpt, "a file or command target under a relay action")
        user = source.owner if source.forward else ""
        return Delivery(action.name, user, source.dest, ttl=action.ttl, exec=target.strip())

    async def _target(self, node: _Node, target: str, rcpt: str, parent_user: str,
                      depth: int, at: Step | None = None) -> _Node:
        """An address or a user target: the table has checked its form (values.check_target)."""
        if target_kind(target) == "address":
            action = await self._route(target)
            if action is None:
                error = PermFail(Reply(550, "5.7.1", f"Invalid recipient: <{rcpt}>"),
                                 f"alias target <{target}> matches no rule")
                if at is not None:
                    at.add("address", target, detail="matches no rule", error=error)
                raise error
            step = at.add("address", target, action=action.name) if at is not None else None
            return _Node("address", target, action, depth, target.rpartition("@")[2].lower(),
                         parent_user, step)
        if not _USERNAME.match(target):
            error = expansion_problem(rcpt, "malformed alias target")
            if at is not None:
                at.add("target", target, error=error)
            raise error
        step = at.add("user", target, action=node.action.name) if at is not None else None
        return _Node("user", target, node.action, depth, node.domain, parent_user, step)

    async def _first(self, table_name: str, keys: list[str]) -> tuple[str, ExpandList] | None:
        """The first key of `keys` the table holds, and its targets."""
        table = self._tables[table_name]
        for key in keys:
            value = await table.lookup(Service.ALIAS, key)
            if value is not None:
                return key, value
        return None

    async def _userinfo(self, action: ActionDecl, user: str) -> Userinfo | None:
        return await userinfo(self._tables, action, user)


#: `<getpwnam>`, the default userbase: the system password database, through
#: the table layer (a thread, the table timeout, NSS failure = ERROR).
SYSTEM_USERBASE: Final = open_table("<getpwnam>", "getpwnam", None)


async def userinfo(tables: Mapping[str, Table], action: ActionDecl, user: str) -> Userinfo | None:
    """The user's uid/gid/home from the action's userbase (system accounts by default)."""
    table = tables[action.userbase] if action.userbase is not None else SYSTEM_USERBASE
    return await table.lookup(Service.USERINFO, user)


_ENHANCED = re.compile(r"([245])\.\d{1,3}\.\d{1,3}\Z")


def _error_reply(code: int, text: str) -> MailError:
    """`error:NNN [X.Y.Z] text`: the RCPT gets that reply (docs/tables.md,
    Alias targets); an enhanced code of the same class is kept, else X.0.0."""
    kind = TempFail if code < 500 else PermFail
    first, _, rest = text.partition(" ")
    found = _ENHANCED.match(first)
    if found and found.group(1) == str(code // 100):
        return kind(Reply(code, first, rest.strip() or "Error"))
    return kind(Reply(code, f"{code // 100}.0.0", text or "Error"))
