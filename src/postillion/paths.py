"""Where an installed Postillion looks for things, in one place.

The daemon, `postillion ctl`, `mailq` and `sendmail` must agree on these
without reading the configuration: `sendmail` runs as any local user, who
may not be able to read it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

#: The configuration `postillion run` and `check` read without -f.
DEFAULT_CONFIG: Final = "/etc/postillion/postillion.conf"
#: The queue directory `postillion run` uses without -s.
DEFAULT_SPOOL: Final = "/var/spool/postillion"
#: Names another spool for `ctl`, `mailq` and `sendmail` (as -s does for ctl).
SPOOL_ENV: Final = "POSTILLION_SPOOL"
#: The control socket, at the top of the spool (0711: reachable, not listable).
CONTROL_SOCKET: Final = "control.sock"


def spool_dir(arg: str | None = None) -> Path:
    """-s SPOOL, else $POSTILLION_SPOOL, else the default spool."""
    return Path(arg or os.environ.get(SPOOL_ENV) or DEFAULT_SPOOL)


def control_path(spool: str | os.PathLike[str]) -> Path:
    return Path(spool) / CONTROL_SOCKET
