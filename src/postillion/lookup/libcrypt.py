"""The system's own crypt(3), libxcrypt, through ctypes.

System passwords are hashed by whatever `passwd`/`chpasswd` and PAM chose:
yescrypt `$y$` on Debian 12, SHA-crypt on older systems, sometimes bcrypt or
gost-yescrypt.  Checking them with the library that wrote them is the only
way every one of those works, and the one way new schemes keep working.
(Python's `crypt` module wrapped the same library; it is deprecated and
gone in 3.13.)

Each call hashes into a `struct crypt_data` of its own (`crypt_rn` with a
buffer allocated per call), so checks may run in several threads at once;
ctypes releases the GIL for the duration.  `crypt_checksalt` and
`crypt_preferred_method` are libxcrypt's; with a library that lacks them
(an old glibc libcrypt) every setting is tried as is and the preferred
method is SHA-512.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import functools
import hmac
import logging
from typing import Final

logger = logging.getLogger("postillion.auth")

#: sizeof(struct crypt_data) in libxcrypt's <crypt.h>: output, setting and
#: input buffers, reserved space, and 30 KiB of internal state.
CRYPT_DATA_SIZE: Final = 32768
#: CRYPT_GENSALT_OUTPUT_SIZE in <crypt.h>.
GENSALT_OUTPUT_SIZE: Final = 192


class Salt(enum.IntEnum):
    """crypt_checksalt(3)'s answers."""

    OK = 0
    INVALID = 1
    METHOD_DISABLED = 2
    METHOD_LEGACY = 3
    TOO_CHEAP = 4


class LibCrypt:
    """One loaded libcrypt.  Raises OSError if `path` cannot be loaded or
    lacks `crypt_rn`."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path, use_errno=True)
        self.path = path
        self._crypt_rn = lib.crypt_rn  # AttributeError is an OSError below
        self._crypt_rn.restype = ctypes.c_char_p
        self._crypt_rn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
        self._checksalt = getattr(lib, "crypt_checksalt", None)
        if self._checksalt is not None:
            self._checksalt.restype = ctypes.c_int
            self._checksalt.argtypes = [ctypes.c_char_p]
        self._preferred = getattr(lib, "crypt_preferred_method", None)
        if self._preferred is not None:
            self._preferred.restype = ctypes.c_char_p
            self._preferred.argtypes = []
        self._gensalt = getattr(lib, "crypt_gensalt_rn", None)
        if self._gensalt is not None:
            self._gensalt.restype = ctypes.c_char_p
            self._gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p,
                                      ctypes.c_int, ctypes.c_char_p, ctypes.c_int]

    def crypt(self, phrase: bytes, setting: str) -> str | None:
        """crypt(3) of `phrase` with `setting` (a full hash will do); None
        when the library refuses the setting or runs out of memory."""
        data = ctypes.create_string_buffer(CRYPT_DATA_SIZE)
        out = self._crypt_rn(phrase, setting.encode("ascii", "replace"), data, CRYPT_DATA_SIZE)
        return None if out is None else out.decode("ascii", "replace")

    def checksalt(self, setting: str) -> Salt:
        """Whether this library can check `setting` (legacy schemes: yes)."""
        if self._checksalt is None:
            return Salt.OK
        try:
            return Salt(self._checksalt(setting.encode("ascii", "replace")))
        except ValueError:
            return Salt.INVALID

    def preferred_method(self) -> str:
        """The prefix this library writes new hashes with (`$y$` on Debian 12)."""
        if self._preferred is None:
            return "$6$"
        out = self._preferred()
        return out.decode("ascii") if out else "$6$"

    def gensalt(self, prefix: str | None = None) -> str | None:
        """A fresh setting for `prefix` (default: the preferred method) at the
        library's default cost, as `passwd` would write; None if unsupported."""
        if self._gensalt is None:
            return None
        out = ctypes.create_string_buffer(GENSALT_OUTPUT_SIZE)
        raw = None if prefix is None else prefix.encode("ascii")
        setting = self._gensalt(raw, 0, None, 0, out, GENSALT_OUTPUT_SIZE)
        return None if setting is None else setting.decode("ascii")

    def verify(self, password: bytes, stored: str) -> bool | None:
        """Whether `password` hashes to `stored`, in constant time; None when
        the library cannot compute it (see `crypt`)."""
        computed = self.crypt(password, stored)
        if computed is None:
            return None
        return hmac.compare_digest(computed.encode("ascii", "replace"),
                                   stored.encode("ascii", "replace"))


def load(name: str = "crypt") -> LibCrypt | None:
    """The library `ctypes.util.find_library(name)` finds, or None (logged)."""
    path = ctypes.util.find_library(name)
    if path is None:
        logger.warning("auth: no lib%s found: system passwords cannot be checked", name)
        return None
    try:
        return LibCrypt(path)
    except (OSError, AttributeError) as e:
        logger.warning("auth: cannot use %s: %s: system passwords cannot be checked", path, e)
        return None


@functools.cache
def system() -> LibCrypt | None:
    """The system's libcrypt, loaded once per process."""
    return load()
