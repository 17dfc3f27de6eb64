"""Each SMTP verb's check and proceed, and the AUTH dialogue.

Part of `protocol.py`'s machine, split the way h11 splits its own.  As in
OpenSMTPD's session, each verb has a *check* (validate the line, choose the
refusal) and a *proceed* (act on what the check returned); `protocol.VERBS`
names the pair for each verb and `ServerProtocol._dispatch` calls them.  A
check raises `_Refusal` (the machine then answers and counts the failure);
a proceed hands out an event, queues a reply, or starts a dialogue.

They are functions of the machine, not its methods, like the parameter
checks in `_syntax.py`: they read and move its state (`proto._rcpts`,
`proto._events` ...) and nothing else, and do no I/O.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from postillion.errors import Reply
from postillion.smtp._events import (
    Auth,
    BdatEnd,
    DataStart,
    Event,
    Helo,
    MailFrom,
    Quit,
    RcptTo,
    Reset,
    StartTls,
    State,
)
from postillion.smtp._replies import (
    AUTH_CANCELLED,
    AUTH_FIRST,
    BAD_BASE64,
    BDAT_SYNTAX,
    BYE,
    ENCRYPTION_REQUIRED,
    HELP,
    NON_ASCII_ADDRESS,
    NOT_IMPLEMENTED,
    OK,
    RECIPIENT_SYNTAX,
    RESET_OK,
    SENDER_SYNTAX,
    TLS_FIRST,
    TOO_MANY_MAILS,
    TOO_MANY_RECIPIENTS,
    UNKNOWN_MECHANISM,
    UNSUPPORTED_PARAMETER,
    _sequence,
    _syntax,
)
from postillion.smtp._state import _OUT_OF_SEQUENCE, TRANSITIONS
from postillion.smtp._syntax import (
    MAIL_PARAMETERS,
    RCPT_PARAMETERS,
    _BadAddress,
    _is_domain,
    _ParamCheck,
    _parse_params,
    _parse_path,
    _Refusal,
)

if TYPE_CHECKING:
    from postillion.smtp.protocol import ServerProtocol


def _need_sequence(proto: ServerProtocol, event_type: type[Event]) -> None:
    """Refuse an event the TRANSITIONS table has no move for (503 5.5.1)."""
    if (proto.state, event_type) not in TRANSITIONS:
        raise _Refusal(_OUT_OF_SEQUENCE[event_type](proto.state))


# --------------------------------------------------------------------------
# Checks: validate the argument, return the event (None when there is none to
# report), raise _Refusal.


def _check_hello(proto: ServerProtocol, arg: str, extended: bool) -> Helo:
    """RFC 5321 §4.1.1.1: one domain or address literal, printable, <= 255."""
    domain = arg.strip(" ")
    if not domain:
        raise _Refusal(_syntax("EHLO hostname" if extended else "HELO hostname"))
    # A trailing dot (FQDN written absolute) is harmless in a greeting.
    bare = domain[:-1] if domain.endswith(".") and not domain.startswith("[") else domain
    if not _is_domain(bare):
        raise _Refusal(Reply(501, "5.5.4", "Invalid domain name"))
    return Helo(domain, extended)


def check_helo(proto: ServerProtocol, arg: str) -> Helo:
    return _check_hello(proto, arg, extended=False)


def check_ehlo(proto: ServerProtocol, arg: str) -> Helo:
    return _check_hello(proto, arg, extended=True)


def _split_path(proto: ServerProtocol, arg: str, keyword: str, bad: Reply) -> tuple[str, str]:
    """`FROM:<path> params` -> (path text, params text); one space allowed after ':'."""
    n = len(keyword)
    head = arg[:n]
    if not (head.isascii() and head.upper() == keyword):
        verb = "MAIL" if keyword == "FROM:" else "RCPT"
        raise _Refusal(_syntax(f"{verb} {keyword}<address>"))
    rest = arg[n:].lstrip(" ")
    close = rest.find(">")
    if not rest.startswith("<") or close < 0:
        raise _Refusal(bad)
    after = rest[close + 1 :]
    if after and not after.startswith(" "):
        raise _Refusal(bad)
    return rest[1:close], after


def _check_params(proto: ServerProtocol, text: str,
                  known: Mapping[str, tuple[str | None, _ParamCheck]]) -> Mapping[str, str]:
    params = _parse_params(text)
    for key in params:
        entry = known.get(key)
        if entry is None or (entry[0] is not None and not getattr(proto.features, entry[0])):
            raise _Refusal(UNSUPPORTED_PARAMETER)
    checked = {key: known[key][1](proto, value) for key, value in params.items()}
    return MappingProxyType(checked)


def check_mail(proto: ServerProtocol, arg: str) -> MailFrom:
    """Sequence, TLS/AUTH policy, max_mails, `FROM:<path>`, then
    parameters (docs/smtp.md); SMTPUTF8 lets the path be UTF-8."""
    _need_sequence(proto, MailFrom)
    if proto.features.tls_required and not proto.tls:
        raise _Refusal(TLS_FIRST)
    if proto.features.auth_required and proto.authenticated is None:
        raise _Refusal(AUTH_FIRST)
    if proto._mails >= proto.limits.max_mails:
        raise _Refusal(TOO_MANY_MAILS, counts=False)
    inner, rest = _split_path(proto, arg, "FROM:", SENDER_SYNTAX)
    params = _check_params(proto, rest, MAIL_PARAMETERS)
    try:
        sender = _parse_path(inner, utf8="SMTPUTF8" in params)
    except _BadAddress as bad:
        raise _Refusal(NON_ASCII_ADDRESS if bad.non_ascii else SENDER_SYNTAX) from None
    return MailFrom(sender, params)


def check_rcpt(proto: ServerProtocol, arg: str) -> RcptTo:
    """Sequence, `TO:<path>` (never `<>`), parameters, then max_rcpt."""
    _need_sequence(proto, RcptTo)
    inner, rest = _split_path(proto, arg, "TO:", RECIPIENT_SYNTAX)
    try:
        rcpt = _parse_path(inner, utf8=proto.smtputf8)
    except _BadAddress as bad:
        raise _Refusal(NON_ASCII_ADDRESS if bad.non_ascii else RECIPIENT_SYNTAX) from None
    if rcpt is None:
        raise _Refusal(RECIPIENT_SYNTAX)
    params = _check_params(proto, rest, RCPT_PARAMETERS)
    if proto._rcpts >= proto.limits.max_rcpt:
        # RFC 5321 §4.5.3.1.8: the client sends the rest in another
        # transaction; those already accepted stay.
        raise _Refusal(TOO_MANY_RECIPIENTS, counts=False)
    return RcptTo(rcpt, params)


def check_data(proto: ServerProtocol, arg: str) -> DataStart:
    _need_sequence(proto, DataStart)
    if arg:
        raise _Refusal(_syntax("DATA"))
    return DataStart()


def check_starttls(proto: ServerProtocol, arg: str) -> StartTls:
    """RFC 3207: once, after EHLO, outside a transaction, no argument."""
    if proto.tls:
        raise _Refusal(_sequence("TLS already active"))
    if not proto.features.starttls:
        raise _Refusal(NOT_IMPLEMENTED)
    if arg:
        raise _Refusal(_syntax("STARTTLS"))
    _need_sequence(proto, StartTls)
    return StartTls()


def check_auth(proto: ServerProtocol, arg: str) -> tuple[str, str | None]:
    """RFC 4954 §4: offered, after EHLO, outside a transaction, once, on
    TLS (538 5.7.11 before it), PLAIN or LOGIN (504 5.5.4 else)."""
    if not proto.features.auth:
        raise _Refusal(NOT_IMPLEMENTED)
    if proto.authenticated is not None:
        raise _Refusal(_sequence("already authenticated"))
    _need_sequence(proto, Auth)
    if not (proto.tls or proto.features.insecure_auth):
        raise _Refusal(ENCRYPTION_REQUIRED)
    mechanism, _, initial = arg.partition(" ")
    mechanism = mechanism.upper() if mechanism.isascii() else ""
    if not mechanism:
        raise _Refusal(_syntax("AUTH mechanism [initial-response]"))
    if mechanism not in ("PLAIN", "LOGIN"):
        raise _Refusal(UNKNOWN_MECHANISM)
    if " " in initial:
        raise _Refusal(_syntax("AUTH mechanism [initial-response]"))
    return mechanism, initial or None


def check_bdat(proto: ServerProtocol, arg: str) -> tuple[int, bool]:
    """RFC 3030: `BDAT size [LAST]`.  The chunk is read whatever the
    state; a malformed line closes the session, since where the octets
    that follow end could then only be guessed."""
    if not proto.features.chunking:
        raise _Refusal(NOT_IMPLEMENTED)
    words = arg.split(" ")
    size = words[0]
    # isascii first: "²" is a digit to str.isdigit() and "laſt".upper() is "LAST".
    last = len(words) == 2 and words[1].isascii() and words[1].upper() == "LAST"
    if (not (size.isascii() and size.isdigit()) or len(size) > 18 or len(words) > 2
            or (len(words) == 2 and not last)):
        raise _Refusal(BDAT_SYNTAX, fatal=True)
    return int(size), last


def check_no_argument(proto: ServerProtocol, arg: str) -> None:
    if arg:
        raise _Refusal(Reply(501, "5.5.4", "Invalid command: unexpected argument"))


def check_any(proto: ServerProtocol, arg: str) -> None:
    """NOOP and HELP may carry a string, which is ignored (RFC 5321 §4.1.1.9)."""


def check_not_implemented(proto: ServerProtocol, arg: str) -> None:
    """VRFY/EXPN would let anyone enumerate users; TURN/ETRN are not ours."""
    raise _Refusal(NOT_IMPLEMENTED)


# --------------------------------------------------------------------------
# Proceeds: act on what the check returned.


def proceed_owed(proto: ServerProtocol, event: Event | None) -> None:
    """Hand the event to the session; parsing waits for its reply."""
    assert event is not None
    proto._events.append(event)


def proceed_starttls(proto: ServerProtocol, event: object) -> None:
    assert isinstance(event, StartTls)
    proto._events.append(event)


def proceed_auth(proto: ServerProtocol, event: object) -> None:
    """Ask for what the client did not send yet, or hand out Auth."""
    assert isinstance(event, tuple)
    mechanism, initial = event
    proto._auth_mech, proto._auth_user = mechanism, None
    if initial is None:
        _ask(proto, b"334 \r\n" if mechanism == "PLAIN" else b"334 VXNlcm5hbWU6\r\n")
    else:
        # The line's own bytes back (it was decoded with surrogateescape):
        # a non-ASCII one is then refused as base64, never raised on.
        auth_response(proto, initial.encode("utf-8", "surrogateescape"), initial=True)


def _ask(proto: ServerProtocol, challenge: bytes) -> None:
    proto.state = State.AUTH
    proto._out.append(challenge)


def auth_response(proto: ServerProtocol, line: bytes, initial: bool = False) -> None:
    """One SASL response line: `*` cancels, else base64 (RFC 4954 §4)."""
    proto.state = State.READY
    shown = b"AUTH " + proto._auth_mech.encode() + b" (...)"
    if line == b"*":
        proto._refuse(shown, AUTH_CANCELLED)
        return
    try:
        decoded = b"" if initial and line == b"=" else base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        proto._refuse(shown, BAD_BASE64)
        return
    text = decoded.decode("utf-8", "surrogateescape")
    if proto._auth_mech == "PLAIN":
        parts = text.split("\0")
        if len(parts) != 3:
            proto._refuse(shown, BAD_BASE64)
            return
        proto._events.append(Auth("PLAIN", parts[1], parts[2], parts[0]))
    elif proto._auth_user is None:
        proto._auth_user = text
        _ask(proto, b"334 UGFzc3dvcmQ6\r\n")
    else:
        proto._events.append(Auth("LOGIN", proto._auth_user, text))


def proceed_bdat(proto: ServerProtocol, event: object) -> None:
    """Start reading the chunk; the reply comes once it is all read."""
    assert isinstance(event, tuple)
    size, last = event
    proto._bdat_left, proto._bdat_chunk, proto._bdat_last = size, size, last
    proto._bdat_refusal = None
    if proto.state is not State.BDAT:
        proto._phases += 1
    if proto.state is State.RCPT:
        proto._size = 0
        proto._bdat_cr = False
    elif proto.state is not State.BDAT:
        proto._bdat_refusal = _OUT_OF_SEQUENCE[BdatEnd](proto.state)


def proceed_rset(proto: ServerProtocol, event: Event | None) -> None:
    proto.state = TRANSITIONS[(proto.state, Reset)]
    proto._rcpts = 0
    proto.smtputf8 = False
    proto._queue(RESET_OK)
    proto._events.append(Reset())


def proceed_noop(proto: ServerProtocol, event: Event | None) -> None:
    proto._queue(OK)


def proceed_help(proto: ServerProtocol, event: Event | None) -> None:
    proto._queue(HELP)


def proceed_quit(proto: ServerProtocol, event: Event | None) -> None:
    proto._queue(BYE)
    proto._events.append(Quit())
    proto._close("quit")
