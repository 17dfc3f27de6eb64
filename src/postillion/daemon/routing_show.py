"""How `postillion route` shows an Explanation: text for a human, or one
JSON object (its shape is documented in docs/commands.md, route).

Kept apart from daemon/routing_explain.py, which finds the answers: this
module only words them, and touches no table, file or DNS.
"""

from __future__ import annotations

from typing import Any, Final

from postillion.daemon.routing_explain import Explanation, RelayPlan, Resolved
from postillion.errors import MailError, Reply
from postillion.lookup.expand import Step
from postillion.table.values import Userinfo

#: Indentation of one level of the expansion tree.
INDENT: Final = "  "

#: What each relay scheme does about TLS (docs/architecture.md, The MTA:
#: the SMTP client): (mode for JSON, words for a human).
_TLS: Final = {
    "smtp": ("opportunistic", "opportunistic: STARTTLS if offered, certificate not checked"),
    "smtp+tls": ("starttls", "required: STARTTLS"),
    "smtp+notls": ("none", "none: never"),
    "smtps": ("smtps", "required: TLS on connect (smtps)"),
    "ssl": ("ssl", "required: STARTTLS on port 25, else TLS on connect on 465"),
    "lmtp": ("none", "none (LMTP)"),
}


def tls_mode(plan: RelayPlan) -> tuple[str, str]:
    mode, words = _TLS.get(plan.scheme, (plan.scheme, plan.scheme))
    if mode in ("starttls", "smtps", "ssl"):
        words += ", certificate verified" if plan.verify else ", certificate not verified"
    return mode, words


def _user(user: Userinfo | None) -> str:
    return f"{user.username}({user.uid}:{user.gid})" if user is not None else "-"


def _error(error: MailError) -> str:
    why = f" ({error.reason})" if error.reason and error.reason != error.reply.text else ""
    return f"{error.reply}{why}"


def _session(ex: Explanation) -> str:
    facts = ex.facts
    where = "from local" if ex.question.src is None else f"from {facts.address}" + \
        (" (local)" if facts.is_local else "")
    auth = f"auth as {facts.user}" if facts.authenticated else "not authenticated"
    return f"{where}, {auth}, {'TLS' if facts.tls else 'no TLS'}; MAIL FROM:<{ex.sender}>"


def _final_line(final: Resolved) -> str:
    """The delivery in one line: method, where, as whom."""
    d = final.delivery
    if final.method == "relay":
        plan = final.relay
        how = "smarthost" if plan is not None and plan.smarthost else "MX"
        if plan is None:
            return f"relay to {d.dest.rpartition('@')[2]}"
        return f"relay to {plan.target} ({how})"
    as_user = f" as {_user(final.user)}" if final.user is not None else ""
    if final.method in ("maildir", "mbox", "file"):
        what = final.path or d.exec or "?"
        method = "mbox" if final.method == "file" else final.method
        return f"{method} {what}{as_user}"
    if final.method == "mda":
        return f'mda "{final.command}"{as_user}'
    if final.method == "lmtp" and final.lmtp is not None:
        return f"lmtp {final.lmtp[0]} RCPT TO:<{final.lmtp[1]}>{as_user}"
    return f"{final.method}{as_user}"


def _tree_lines(step: Step, depth: int, index: dict[tuple[str, str, str], int],
                shown: set[int], out: list[str], parent_action: str = "") -> None:
    pad = INDENT * depth
    if step.kind == "delivery" and step.delivery is not None:
        number = index.get(step.delivery.key)
        again = " (the same delivery again)" if number in shown else ""
        if number is not None:
            shown.add(number)
        out.append(f"{pad}=> [{number}] {step.value}{again}")
    else:
        label = {"forward": ".forward ", "target": "target "}.get(step.kind, "")
        action = f" [action {step.action}]" if step.action and step.action != parent_action \
            else ""
        detail = f": {step.detail}" if step.detail else ""
        out.append(f"{pad}{label}{step.value}{action}{detail}")
    if step.error is not None:
        out.append(f"{pad}{INDENT}! {_error(step.error)}")
    for child in step.children:
        _tree_lines(child, depth + 1, index, shown, out, step.action or parent_action)


def _relay_lines(plan: RelayPlan, pad: str) -> list[str]:
    lines = [f"{pad}port {plan.port if plan.port is not None else '-'}, scheme {plan.scheme}",
             f"{pad}tls: {tls_mode(plan)[1]}",
             f"{pad}auth: " + (f"label {plan.auth_label} from <{plan.auth_table}>"
                              if plan.auth_label else "none"),
             f"{pad}helo: {plan.helo}"]
    if plan.mail_from is not None:
        lines.append(f"{pad}MAIL FROM:<{plan.mail_from}> (the action's mail-from)")
    if plan.sources:
        lines.append(f"{pad}source addresses: {', '.join(plan.sources)}")
    lines.append(f"{pad}{'hosts' if plan.smarthost else 'MX hosts'}, in the order tried:")
    for preference, name, addresses in plan.hosts:
        lines.append(f"{pad}{INDENT}{preference} {name}: {', '.join(addresses)}")
    preferences = [h[0] for h in plan.hosts]
    if len(set(preferences)) < len(preferences):
        lines.append(f"{pad}(hosts of equal preference: a new random order each time)")
    if plan.skipped:
        lines.append(f"{pad}(not used, by `mta limit inet4|inet6`: {', '.join(plan.skipped)})")
    return lines


def text(ex: Explanation) -> str:
    """The explanation for a terminal: session, rule, reply, tree, deliveries."""
    out = [f"session: {_session(ex)}"]
    if ex.tree is None:          # the SMTP machine refused an address
        out.append(f"{ex.stage} refused: {ex.reply}")
        return "\n".join(out) + "\n"
    if ex.rule is not None:
        out.append(f"rule: {ex.rule.pos.file}:{ex.rule.pos.line}: {ex.rule_text}")
    else:
        out.append("rule: none matches (refused: relay denied)")
    reply = f"RCPT TO:<{ex.rcpt}>: {ex.reply}"
    out.append(reply + (f" ({ex.reason})" if ex.reason else ""))
    index = {f.delivery.key: i for i, f in enumerate(ex.finals, 1)}
    if ex.tree is not None and ex.tree.children:
        out.append("")
        out.append("expansion:")
        for child in ex.tree.children:
            _tree_lines(child, 1, index, set(), out)
    if ex.finals:
        out.append("")
        out.append("deliveries:")
    for i, final in enumerate(ex.finals, 1):
        d = final.delivery
        out.append(f"{INDENT}[{i}] {d.dest} (action {d.dispatcher}): {_final_line(final)}")
        pad = INDENT * 3
        if final.user is not None:
            out.append(f"{pad}user {final.user.username} uid {final.user.uid} "
                       f"gid {final.user.gid} home {final.user.home}")
        if final.argv:
            out.append(f"{pad}runs (no shell): {list(final.argv)}")
        if final.junk:
            out.append(f"{pad}(a message marked as spam goes to its .Junk folder)")
        if final.relay is not None:
            out += _relay_lines(final.relay, pad)
        if final.error is not None:
            out.append(f"{pad}! {_error(final.error)}")
    for note in ex.notes:
        out.append(f"note: {note}")
    return "\n".join(out) + "\n"


# -- JSON ---------------------------------------------------------------------------


def _reply(reply: Reply | None) -> dict[str, Any] | None:
    if reply is None:
        return None
    return {"code": reply.code, "enhanced": reply.enhanced, "text": reply.text,
            "line": str(reply)}


def _error_json(error: MailError | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {**(_reply(error.reply) or {}), "reason": error.reason,
            "temporary": error.reply.code < 500}


def _step_json(step: Step, index: dict[tuple[str, str, str], int]) -> dict[str, Any]:
    return {"kind": step.kind, "value": step.value, "action": step.action or None,
            "detail": step.detail or None,
            "delivery": index.get(step.delivery.key) if step.delivery is not None else None,
            "error": _error_json(step.error),
            "children": [_step_json(c, index) for c in step.children]}


def _relay_json(plan: RelayPlan) -> dict[str, Any]:
    mode, _ = tls_mode(plan)
    return {"target": plan.target, "smarthost": plan.smarthost, "scheme": plan.scheme,
            "port": plan.port, "tls": mode, "verify": plan.verify,
            "auth": {"table": plan.auth_table, "label": plan.auth_label}
            if plan.auth_label else None,
            "helo": plan.helo, "mail_from": plan.mail_from, "sources": plan.sources,
            "hosts": [{"preference": pref, "name": name, "addresses": addresses}
                      for pref, name, addresses in plan.hosts],
            "skipped": plan.skipped}


def _final_json(i: int, final: Resolved) -> dict[str, Any]:
    d = final.delivery
    user = final.user
    return {"index": i, "dest": d.dest, "action": d.dispatcher, "method": final.method,
            "exec": d.exec or None,
            "user": {"name": user.username, "uid": user.uid, "gid": user.gid,
                     "home": user.home} if user is not None else None,
            "path": final.path or None, "command": final.command or None,
            "argv": list(final.argv) if final.argv else None,
            "lmtp": {"destination": final.lmtp[0], "rcpt_to": final.lmtp[1]}
            if final.lmtp is not None else None,
            "junk": final.junk,
            "relay": _relay_json(final.relay) if final.relay is not None else None,
            "error": _error_json(final.error)}


def as_json(ex: Explanation) -> dict[str, Any]:
    """The explanation as one JSON object (docs/commands.md, route)."""
    facts = ex.facts
    index = {f.delivery.key: i for i, f in enumerate(ex.finals, 1)}
    rule = None
    if ex.rule is not None:
        rule = {"file": ex.rule.pos.file, "line": ex.rule.pos.line, "text": ex.rule_text,
                "action": ex.rule.action}
    return {
        "address": ex.question.address,
        "sender": ex.sender,
        "rcpt": ex.rcpt or None,
        "session": {"src": facts.address, "local": facts.is_local,
                    "auth": facts.user if facts.authenticated else None, "tls": facts.tls},
        "stage": ex.stage,
        "rule": rule,
        "reply": _reply(ex.reply),
        "reason": ex.reason or None,
        "expansion": [_step_json(c, index) for c in ex.tree.children] if ex.tree else [],
        "deliveries": [_final_json(i, f) for i, f in enumerate(ex.finals, 1)],
        "notes": ex.notes,
        "exit": ex.exit_code,
    }
