"""The one exception a bad smtpd.conf produces, with every problem in it.

An administrator fixing a config wants the whole list at once, each line
pointing at `file:line:column` (maddy's positions, OpenSMTPD's `file:line`),
so `postillion check` and the daemon print `str(err)` and stop: never a
traceback, never one error per run.
"""

from __future__ import annotations

import difflib
from typing import Iterable

from postillion.config.model import Position


class ConfigError(Exception):
    """A config that cannot be used; `errors` lists (position, message) pairs.

    `str(err)` is one line per error: `smtpd.conf:12:8: expected "for" after
    "match", got "to"`.  Messages name what was expected and what was found,
    in the manual's words.
    """

    def __init__(self, errors: Iterable[tuple[Position, str]]) -> None:
        self.errors: list[tuple[Position, str]] = list(errors)
        super().__init__(self._render())

    def _render(self) -> str:
        return "\n".join(f"{pos}: {message}" for pos, message in self.errors)

    def __str__(self) -> str:
        return self._render()


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """The one candidate close enough to `word` to suggest, else None.

    Cheap and bounded: long words (garbage, not typos) get no suggestion.
    """
    if not word or len(word) > 64:
        return None
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.75)
    return close[0] if close else None
