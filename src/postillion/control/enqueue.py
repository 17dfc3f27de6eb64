"""`enqueue`: the control verb behind `sendmail` (control/sendmail.py).

The request's arguments are the envelope -- the sender, then one or more
recipients -- and its body is the message, prepared by the client (Date:,
Message-ID:, From: added when missing, CRLF line ends).  The sender
argument is "" when the user gave no `-f` (the sender is then
`LOGIN@HOSTNAME`, the configuration's hostname) and `<>` for the null
sender.

The message is queued the way a bounce is: handed to an smtp process
(`Inject`, daemon/smtplinks.py) that runs it through a local session --
`from local` rules, expansion, the durable commit -- which also names the
submitting user: the login name and uid come from the kernel's peer
credentials on the control socket, never from the client.  That session
writes `Received: by HOST (Postillion, from userid UID user LOGIN)`,
records LOGIN as the envelopes' `username` (so `mailq` shows users their
own mail) and puts `user=LOGIN uid=UID` on its `smtp message` log line.

*Choice:* any local user may give any envelope sender with `-f`, as with
Postfix and OpenSMTPD (cron, mailing-list software and `git send-email`
need it); it is never anonymous: the `Received:` header and the log name
the real user.

*Choice:* a message goes to all its recipients or to none: one refused
recipient refuses the submission (smtp/inject.py), so a user who fixes the
address and runs the command again sends nobody a second copy.
"""

from __future__ import annotations

import logging
import pwd
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from postillion.control import protocol as wire
from postillion.control.server import Answer, ControlError, Request, Verb
from postillion.errors import Reply

logger = logging.getLogger("postillion.control")

#: What the client may add to a message at the daemon's size limit (Date:,
#: Message-ID:, From:, CRs before LFs) and still reach the local session,
#: which refuses anything over `max-message-size` after our `Received:`.
#: Past the limit plus this, the request is refused before its body is read.
BODY_HEADROOM: Final = 64 * 1024
#: The sender argument for "no -f": LOGIN@HOSTNAME.
DEFAULT_SENDER: Final = ""
#: The sender argument for the null sender (`-f <>`, `-f ""`).
NULL_SENDER: Final = "<>"
#: Longest address accepted (RFC 5321 §4.5.3.1.3's path, with room for UTF-8).
MAX_ADDRESS: Final = 512
#: Most recipients one submission may name (the session's own limit,
#: `max-rcpt`, applies too).
MAX_RCPTS: Final = 1000


@dataclass(frozen=True, slots=True)
class Enqueue:
    """The `enqueue` verb over the queue process's links to the smtp processes."""

    #: SmtpLinks.send(sender, rcpts, message, user=, uid=): queue through an smtp process.
    send: Callable[..., Awaitable[Reply]]
    hostname: str               # the configuration's: the default sender's domain
    max_message_size: int       # `smtp max-message-size`

    def verbs(self) -> dict[str, Verb]:
        return {"enqueue": Verb(self.enqueue, anyone=True,
                                body_limit=self.max_message_size + BODY_HEADROOM)}

    async def enqueue(self, request: Request, answer: Answer) -> dict[str, Any]:
        peer = request.peer
        try:
            login = pwd.getpwuid(peer.uid).pw_name
        except KeyError:
            raise ControlError(wire.DENIED, f"uid {peer.uid} has no entry in the password "
                                            "database: no login name to send mail as") from None
        if len(request.args) < 2:
            raise ControlError(wire.USAGE, "enqueue: no recipients")
        if len(request.args) > MAX_RCPTS + 1:
            raise ControlError(wire.USAGE, f"enqueue: more than {MAX_RCPTS} recipients")
        sender, rcpts = request.args[0], request.args[1:]
        if sender not in (DEFAULT_SENDER, NULL_SENDER):
            check_address(sender)
        for rcpt in rcpts:
            check_address(rcpt)
        if sender == DEFAULT_SENDER:
            sender = f"{login}@{self.hostname}"
        elif sender == NULL_SENDER:
            sender = ""
        if len(request.body) > self.max_message_size:
            raise ControlError(wire.DATAERR, f"message of {len(request.body)} octets exceeds "
                                             f"the limit of {self.max_message_size}")
        reply = await self.send(sender, rcpts, request.body, user=login, uid=peer.uid)
        if reply.code == 250:
            msgid = reply.text.split(" ", 1)[0]
            if sender != f"{login}@{self.hostname}" and not peer.admin:
                logger.info("control: enqueue msgid=%s by user=%s uid=%d with sender <%s>",
                            msgid, login, peer.uid, sender)
            return {"msgid": msgid, "reply": str(reply)}
        raise ControlError(status_of(reply), str(reply))


def check_address(address: str) -> None:
    """What the local session could not be handed as `<address>`: the
    syntax itself is the session's to judge (its reply says what is wrong)."""
    if not address:
        raise ControlError(wire.DATAERR, "an empty address")
    if len(address) > MAX_ADDRESS:
        raise ControlError(wire.DATAERR, f"address longer than {MAX_ADDRESS} characters")
    if any(ch in "<>" or ch.isspace() or not ch.isprintable() for ch in address):
        raise ControlError(wire.DATAERR, f"{address!r}: not an address (spaces, <, > or "
                                         "control characters)")


def status_of(reply: Reply) -> str:
    """The control status a refusal maps to, for the client's exit code:
    unknown recipient (5.1.1) "not-found" (EX_NOUSER), any other 5xx
    "dataerr" (EX_DATAERR), 4xx "tempfail" (EX_TEMPFAIL) -- except more
    recipients than `max-rcpt` (452 4.5.3): one submission never has room
    for them, however often it is tried, so "dataerr"."""
    if reply.code >= 500:
        return wire.NOT_FOUND if reply.enhanced == "5.1.1" else wire.DATAERR
    if reply.enhanced == "4.5.3":
        return wire.DATAERR
    return wire.TEMPFAIL
