"""Shell syntax in a command that is run without a shell.

`mda` commands (smtpd.conf) and `|command` alias targets (tables) are split
into words and executed directly (docs/configuration.md, Commands), so an
unquoted `| ; & < >`, a backquote or `$(` could only mean their author
expected a shell -- and envelope data in a shell was CVE-2020-7247.  Both
the config parser and the table value parser refuse them with this one
scanner.  A leaf: it imports nothing of ours.
"""

from __future__ import annotations

from typing import Final

SHELL_META: Final = "|;&<>`"


def shell_syntax(command: str) -> str | None:
    """The first unquoted `| ; & < >`, backquote or `$(` of `command`, or None.

    Quotes and backslashes are read as the shell (and shlex) read them."""
    quote = ""
    i = 0
    while i < len(command):
        ch = command[i]
        if quote:
            if ch == quote:
                quote = ""
            elif ch == "\\" and quote == '"':
                i += 1
        elif ch in "'\"":
            quote = ch
        elif ch == "\\":
            i += 1
        elif ch in SHELL_META or command.startswith("$(", i):
            return "$(" if ch == "$" else ch
        i += 1
    return None
