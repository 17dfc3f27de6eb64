"""The replies the SMTP machine sends by itself (docs/smtp.md, Replies).

One constant per reply, so a test or the session names the reply rather than
spelling its text again.
"""

from __future__ import annotations

from typing import Final

from postillion.errors import Reply

# --------------------------------------------------------------------------
# Replies the machine sends by itself (docs/smtp.md, Replies)

START_DATA: Final = Reply(354, "", 'Enter mail, end with "." on a line by itself')
READY_TLS: Final = Reply(220, "2.0.0", "Ready to start TLS")
AUTH_OK: Final = Reply(235, "2.0.0", "Authentication succeeded")

OK: Final = Reply(250, "2.0.0", "Ok")
RESET_OK: Final = Reply(250, "2.0.0", "Reset state")
BYE: Final = Reply(221, "2.0.0", "Bye")
HELP: Final = Reply(214, "2.0.0", "End of HELP info")
UNRECOGNIZED: Final = Reply(500, "5.5.1", "Invalid command: Command unrecognized")
LINE_TOO_LONG: Final = Reply(500, "5.5.2", "Line too long")
CONTROL_CHARACTER: Final = Reply(501, "5.5.4", "Invalid command: control character in command")
NOT_IMPLEMENTED: Final = Reply(502, "5.5.1", "Command not implemented")
TOO_MANY_FAILURES: Final = Reply(421, "4.7.0", "Too many failed commands, closing connection")
SENDER_SYNTAX: Final = Reply(553, "5.1.7", "Sender address syntax error")
RECIPIENT_SYNTAX: Final = Reply(501, "5.1.3", "Recipient address syntax error")
NON_ASCII_ADDRESS: Final = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
TOO_MANY_RECIPIENTS: Final = Reply(452, "4.5.3", "Too many recipients")
TOO_MANY_MAILS: Final = Reply(452, "4.5.3", "Too many messages sent")
TOO_BIG: Final = Reply(552, "5.3.4", "Message too big for system")
UNSUPPORTED_PARAMETER: Final = Reply(555, "5.5.4", "Unsupported parameter")
PARAMETER_SYNTAX: Final = Reply(501, "5.5.4", "Syntax error in parameters")
TLS_FIRST: Final = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
AUTH_FIRST: Final = Reply(530, "5.7.0", "Authentication required")
ENCRYPTION_REQUIRED: Final = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
UNKNOWN_MECHANISM: Final = Reply(504, "5.5.4", "Unrecognized authentication type")
BAD_BASE64: Final = Reply(501, "5.5.2", "Invalid base64 data")
AUTH_CANCELLED: Final = Reply(501, "5.0.0", "Authentication cancelled")
TOO_MANY_AUTH_FAILURES: Final = Reply(421, "4.7.0", "Too many failed authentication attempts, closing connection")
TOO_MANY_REJECTED_RCPT: Final = Reply(421, "4.7.0", "Too many rejected recipients, closing connection")
BDAT_SYNTAX: Final = Reply(501, "5.5.4", "Syntax: BDAT size [LAST]")
#: The code that accepts each reply-owed event; any other 2xx/3xx is misuse.
ACCEPT_CODES: Final[dict[str, int]] = {"DataStart": 354, "StartTls": 220, "Auth": 235}


def _syntax(usage: str) -> Reply:
    return Reply(501, "5.5.4", f"Syntax: {usage}")


def _sequence(why: str) -> Reply:
    return Reply(503, "5.5.1", f"Bad sequence of commands: {why}")
