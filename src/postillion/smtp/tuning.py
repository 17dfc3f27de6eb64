"""Session timings that are defences, not limits an administrator sets.

The limits of docs/smtp.md live in `config.model.Limits` (each a config keyword).
These few delays have no keyword in smtpd.conf; they are named here, with
their defaults, in one place, so tests can shorten them and the manual can
cite them.
"""

from __future__ import annotations

from dataclasses import dataclass

SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Tuning:
    """Defensive delays of one listener's sessions."""

    #: Early-talker window: the banner waits this long, and a client that
    #: speaks first is refused `554 5.5.0` and closed (spam bots do not wait
    #: for the greeting).  Clients on loopback (`from local`) get
    #: `banner_delay_local`: local submission tools and the benchmark.
    banner_delay: float = 0.5 * SECONDS
    banner_delay_local: float = 0.0
    #: A failed AUTH is answered after a uniformly random delay in [0, this]
    #: (docs/smtp.md: 535 after 0-1 s), to slow password guessing.
    auth_failure_delay: float = 1.0 * SECONDS
    #: The client's PTR lookup, before the banner: a resolver that does not
    #: answer within this costs the client this wait once, then `<unknown>`.
    rdns_timeout: float = 5.0 * SECONDS
    #: Most header octets scanned for `Received:` hops and a bad first line.
    header_scan_limit: int = 1024 * 1024


DEFAULT_TUNING = Tuning()
