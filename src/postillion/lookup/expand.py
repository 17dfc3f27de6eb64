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
  must exist in the userbase.

Depth is bounded by `Limits.expand_depth` (10): deeper, or nothing left to
deliver, answers `550 5.2.4`.  A table that cannot answer raises
`LookupUnavailable` (`451 4.3.0`) and no partial list is ever returned.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Awaitable, Callable, Final, Literal, Mapping

from postillion.config.model import ActionDecl, Limits
from postillion.errors import MailError, PermFail, Reply, TempFail
from postillion.table.services import Service
from postillion.table.table import Table, open_table
from postillion.table.values import BadValue, ExpandList, Userinfo, error_target, target_kind

#: Re-runs the rules for an address found in an alias ("through the
#: rules again"); returns the action, or None when no rule accepts it.
RouteAddress = Callable[[str], Awaitable[ActionDecl | None]]

_USERNAME = re.compile(r"[A-Za-z0-9_.+-]+\Z")
MAX_TARGETS = 1000  # a bound on the fan-out of one expansion, against table loops


@dataclass(frozen=True, slots=True)
class Delivery:
    """One final delivery: the envelope the queue will hold for it.

    `agent` is the envelope's type: "mda" for a local delivery, "mta" for an
    address a `relay` action sends on (then `user` is empty: nobody's
    account is involved, and the address is relayed as it was found).
    """

    dispatcher: str        # the action's name
    user: str              # userbase name the agent delivers as ("" to relay)
    dest: str              # the expanded address (user@domain)
    subaddress: str = ""   # the `+tag`, kept for delivery-time use
    agent: Literal["mda", "mta"] = "mda"
    ttl: float | None = None  # the action's `ttl` (None: `queue ttl`)


@dataclass(frozen=True, slots=True)
class _Node:
    kind: str              # "address" | "user"
    value: str
    action: ActionDecl
    depth: int
    domain: str
    parent_user: str = ""


def invalid_recipient(rcpt: str) -> PermFail:
    return PermFail(Reply(550, "5.1.1", f"Invalid recipient: <{rcpt}>"))


def expansion_problem(rcpt: str, reason: str, temporary: bool = False) -> Exception:
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


class Expander:
    """Expands recipients against the live tables of one configuration."""

    def __init__(self, tables: Mapping[str, Table], limits: Limits, route: RouteAddress) -> None:
        self._tables = tables
        self._limits = limits
        self._route = route

    async def expand(self, rcpt: str, action: ActionDecl) -> list[Delivery]:
        local, _, domain = rcpt.rpartition("@")
        queue = deque([_Node("address", rcpt, action, 0, domain.lower())])
        deliveries: dict[tuple[str, str, str], Delivery] = {}
        seen = 0
        while queue:
            node = queue.popleft()
            seen += 1
            if node.depth > self._limits.expand_depth or seen > MAX_TARGETS:
                raise expansion_problem(rcpt, f"expansion deeper than {self._limits.expand_depth}")
            if node.kind == "address" and node.action.method == "relay":
                # Relayed as written: the next hop expands its own addresses.
                delivery = Delivery(node.action.name, "", node.value, agent="mta",
                                    ttl=node.action.ttl)
                deliveries.setdefault((delivery.dispatcher, "", delivery.dest), delivery)
                children = []
            elif node.kind == "address":
                children = await self._address(node, rcpt)
            else:
                children, delivery = await self._user(node, rcpt)
                if delivery is not None:
                    deliveries.setdefault((delivery.dispatcher, delivery.user, delivery.dest), delivery)
            queue.extend(children)
        if not deliveries:
            raise expansion_problem(rcpt, "nothing to deliver")
        return list(deliveries.values())

    async def _address(self, node: _Node, rcpt: str) -> list[_Node]:
        local, _, domain = node.value.rpartition("@")
        action = node.action
        if action.virtual is not None:
            targets = await self._first(action.virtual,
                                        virtual_keys(local, domain.lower(), self._limits.sub_addr_delim))
            if targets is None:
                raise invalid_recipient(rcpt)
            return await self._children(node, targets, rcpt)
        return [_Node("user", local, action, node.depth + 1, domain.lower(), node.parent_user)]

    async def _user(self, node: _Node, rcpt: str) -> tuple[list[_Node], Delivery | None]:
        action = node.action
        name = node.value.lower()
        aliases = action.alias or action.virtual
        if aliases is not None and name != node.parent_user:
            targets = await self._first(aliases, alias_keys(name, self._limits.sub_addr_delim))
            if targets is not None:
                return await self._children(node, targets, rcpt, parent_user=name), None
        user, tag = split_tag(name, self._limits.sub_addr_delim)
        if await self._userinfo(action, user) is None:
            raise invalid_recipient(rcpt)
        dest = f"{user}@{node.domain}" if node.domain else user
        return [], Delivery(action.name, user, dest, tag, ttl=action.ttl)

    async def _children(self, node: _Node, targets: ExpandList, rcpt: str,
                        parent_user: str = "") -> list[_Node]:
        children = []
        for target in targets.targets:
            children.append(await self._target(node, target, rcpt, parent_user))
        return children

    async def _target(self, node: _Node, target: str, rcpt: str, parent_user: str) -> _Node:
        """One alias target: the table has checked its form (values.check_target)."""
        depth = node.depth + 1
        try:
            kind = target_kind(target)
            if kind == "error":
                raise _error_reply(*error_target(target))
        except BadValue:
            raise expansion_problem(rcpt, "malformed error: target") from None
        if kind in ("command", "file", "include"):
            # Files, commands and includes arrive with the mbox and mda agents;
            # until then they must not be accepted and silently dropped.
            raise expansion_problem(rcpt, f"target kind not supported yet: {kind}", temporary=True)
        if kind == "address":
            action = await self._route(target)
            if action is None:
                raise PermFail(Reply(550, "5.7.1", f"Invalid recipient: <{rcpt}>"),
                               f"alias target <{target}> matches no rule")
            return _Node("address", target, action, depth, target.rpartition("@")[2].lower(), parent_user)
        if not _USERNAME.match(target):
            raise expansion_problem(rcpt, "malformed alias target")
        return _Node("user", target, node.action, depth, node.domain, parent_user)

    async def _first(self, table_name: str, keys: list[str]) -> ExpandList | None:
        table = self._tables[table_name]
        for key in keys:
            value = await table.lookup(Service.ALIAS, key)
            if value is not None:
                return value
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


def _error_reply(code: int, text: str) -> MailError:
    """`error:NNN text`: the RCPT gets that reply (docs/tables.md, Alias targets)."""
    kind = TempFail if code < 500 else PermFail
    return kind(Reply(code, f"{code // 100}.0.0", text or "Error"))
