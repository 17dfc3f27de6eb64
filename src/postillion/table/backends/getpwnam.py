"""`getpwnam`: userinfo from the system password database (`<getpwnam>`).

The default userbase: a local recipient is a system account.  The lookup
may hit NSS (LDAP, sssd...), so it runs in a thread and is subject to the
table timeout like any other backend.  The key is already lowercased, so an
account whose name has capitals cannot receive mail this way (OpenSMTPD's
behaviour too).
"""

from __future__ import annotations

import asyncio
import pwd
from collections.abc import Sequence
from typing import ClassVar

from postillion.table.backend import OneKeyAtATime, Shape
from postillion.table.errors import BackendError
from postillion.table.services import Service


def _getpwnam(key: str) -> str | None:
    try:
        pw = pwd.getpwnam(key)
    except (KeyError, ValueError, UnicodeError):   # no such user; a NUL in the key
        return None
    except OSError as e:                            # NSS (LDAP, sssd...) failed
        raise BackendError(f"getpwnam: {e.strerror or e}") from None
    return f"{pw.pw_uid}:{pw.pw_gid}:{pw.pw_dir}"


class GetpwnamBackend(OneKeyAtATime):
    name: ClassVar[str] = "getpwnam"
    services: ClassVar[frozenset[Service]] = frozenset({Service.USERINFO})

    def __init__(self, config: str | None, *, items: Sequence[str] = (),
                 pairs: Sequence[tuple[str, str]] = (), is_map: bool = False) -> None:
        if config or items or pairs:
            raise BackendError("getpwnam takes no configuration")

    @property
    def shape(self) -> Shape:
        return Shape.QUERY

    def serves(self, service: Service) -> bool:
        return service in self.services

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def update(self) -> None:
        return None

    async def lookup(self, service: Service, key: str) -> str | None:
        if not key:
            return None
        return await asyncio.to_thread(_getpwnam, key)

    async def check(self, service: Service, key: str) -> bool:
        return await self.lookup(service, key) is not None


