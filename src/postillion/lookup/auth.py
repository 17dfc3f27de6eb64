"""Credential checks for the listener's AUTH (docs/smtp.md, STARTTLS and AUTH).

A client that says `AUTH PLAIN` or `AUTH LOGIN` hands us a user name and a
cleartext password; this module answers *ok*, *permfail* or *tempfail*:

* a table that serves `auth` is asked to `check` the key `user:password`
  (OpenSMTPD 7.6's shape: the backend does the comparison);
* otherwise the table's `credentials` for the lowercased user give a hash:
  bcrypt `$2a$`/`$2b$`/`$2y$` (the `bcrypt` package) or SHA-crypt `$5$`/`$6$`
  (Drepper's published algorithm, implemented here and checked against its
  published vectors: the `crypt` module is deprecated and gone in 3.13);
* with no table at all, the system password database: `/etc/shadow`, parsed
  here (the `spwd` module is deprecated too), its hashes checked by the
  system's own libcrypt (libcrypt.py), so that every scheme `passwd` writes
  works: yescrypt `$y$` on Debian 12, `$gy$`, `$6$`, `$5$`, `$2b$`, `$1$`...
  Without a libcrypt the check is a *tempfail*, logged.

An unknown hash scheme is a *permfail* with a warning naming the user, never
the hash.  A table that cannot answer is a *tempfail*: the client sees
`454 4.7.0`, not `535`.  So is a stored hash that is malformed or asks for
more work than `Limits` allows (hashwork.py), as a malformed table value is
everywhere else: the administrator has something to fix, the client did
nothing wrong.

No oracle: a user who does not exist costs what a wrong password costs.  The
unknown-user check hashes the password against a hash of the same scheme and
cost as the users' own -- the most common among the users checked so far,
and until there are any, what `postillion encrypt` writes (bcrypt cost 12)
for a table, or the system's preferred method at its default cost for system
passwords.

Hash checks are slow on purpose, so they run in the AuthPool's threads
(authpool.py), never on the event loop nor in its default executor.  Nothing
here logs a password or a hash.
"""

from __future__ import annotations

import collections
import enum
import functools
import hashlib
import hmac
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Final

import bcrypt

from postillion.config.model import Limits
from postillion.errors import LookupUnavailable
from postillion.lookup import libcrypt
from postillion.lookup.authpool import AuthBusy, AuthPool
from postillion.lookup.hashwork import ENCRYPT_BCRYPT_COST, MalformedHash, Work, hash_work, scheme_of
from postillion.table.errors import printable
from postillion.table.services import Service
from postillion.table.table import Table

logger = logging.getLogger("postillion.auth")

#: The system password database read when `auth` names no table.
SHADOW_PATH: Final = Path("/etc/shadow")

#: Longest user name or password considered at all (a bcrypt input stops at
#: 72 octets; SHA-crypt cost grows with the password length).
MAX_FIELD: Final = 1024

#: Users whose hash's Work is remembered per Authenticator, to model the
#: unknown-user check on the common case; bounded memory, not a setting.
MAX_REMEMBERED: Final = 10_000

#: Longest passphrase libcrypt takes (CRYPT_MAX_PASSPHRASE_SIZE, NUL included).
_CRYPT_MAX_PASSPHRASE: Final = 512


class AuthResult(enum.Enum):
    """How one AUTH ended; the values are the log's `result=` words."""

    OK = "ok"
    PERMFAIL = "permfail"
    TEMPFAIL = "tempfail"


class UnknownScheme(ValueError):
    """A stored secret whose hash scheme we do not implement."""


# --------------------------------------------------------------------------
# SHA-crypt ($5$ = SHA-256, $6$ = SHA-512), Ulrich Drepper's specification
# "Unix crypt using SHA-256 and SHA-512" (2008), steps numbered as there.

_ITOA64: Final = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ROUNDS_DEFAULT: Final = 5000
_ROUNDS_MIN: Final = 1000
_ROUNDS_MAX: Final = 999_999_999
_SALT_MAX: Final = 16


def _b64_24(b2: int, b1: int, b0: int, n: int) -> str:
    w = (b2 << 16) | (b1 << 8) | b0
    out = []
    for _ in range(n):
        out.append(_ITOA64[w & 0x3F])
        w >>= 6
    return "".join(out)


def _sha_crypt_encode(digest: bytes) -> str:
    """The final permuted base-64 of step 22."""
    if len(digest) == 32:
        out = []
        for i in range(10):
            a, b, c = digest[i], digest[i + 10], digest[i + 20]
            triple = ((a, b, c), (c, a, b), (b, c, a))[i % 3]
            out.append(_b64_24(*triple, 4))
        out.append(_b64_24(0, digest[31], digest[30], 3))
        return "".join(out)
    out = []
    for i in range(21):
        a, b, c = digest[i], digest[i + 21], digest[i + 42]
        triple = ((a, b, c), (b, c, a), (c, a, b))[i % 3]
        out.append(_b64_24(*triple, 4))
    out.append(_b64_24(0, 0, digest[63], 2))
    return "".join(out)


def _repeat(block: bytes, length: int) -> bytes:
    return (block * (length // len(block) + 1))[:length]


def sha_crypt(password: bytes, setting: str) -> str:
    """crypt(3) for `$5$[rounds=N$]salt[$...]` and `$6$...`; returns the full hash.

    Raises UnknownScheme for any other prefix, MalformedHash for a bad setting.
    The caller bounds the rounds first (`hashwork.hash_work`): this computes
    whatever the setting asks, up to the specification's 999,999,999.
    """
    if setting.startswith("$5$"):
        new, prefix = hashlib.sha256, "$5$"
    elif setting.startswith("$6$"):
        new, prefix = hashlib.sha512, "$6$"
    else:
        raise UnknownScheme(setting[:3])
    rest = setting[3:]
    rounds, custom = _ROUNDS_DEFAULT, False
    if rest.startswith("rounds="):
        text, sep, rest = rest[7:].partition("$")
        if not sep or not text.isdigit():
            raise MalformedHash("bad rounds= in SHA-crypt setting")
        rounds, custom = min(max(int(text), _ROUNDS_MIN), _ROUNDS_MAX), True
    salt = rest.split("$", 1)[0][:_SALT_MAX].encode("utf-8", "surrogateescape")
    p, s = password, salt
    hlen = new().digest_size
    # Steps 4-8: digest B = H(P S P).
    b = new(p + s + p).digest()
    # Steps 1-3, 9-12: digest A.
    a = new(p + s)
    a.update(_repeat(b, len(p)))
    i = len(p)
    while i > 0:
        a.update(b if i & 1 else p)
        i >>= 1
    da = a.digest()
    # Steps 13-16: P sequence; 17-20: S sequence.
    p_seq = _repeat(new(p * len(p)).digest(), len(p)) if p else b""
    s_seq = _repeat(new(s * (16 + da[0])).digest(), len(s)) if s else b""
    # Step 21: the rounds.
    c = da
    for r in range(rounds):
        h = new()
        h.update(p_seq if r & 1 else c)
        if r % 3:
            h.update(s_seq)
        if r % 7:
            h.update(p_seq)
        h.update(c if r & 1 else p_seq)
        c = h.digest()
    assert len(c) == hlen
    head = f"{prefix}rounds={rounds}$" if custom else prefix
    return f"{head}{salt.decode('utf-8', 'surrogateescape')}${_sha_crypt_encode(c)}"


def verify_hash(password: str, stored: str, limits: Limits = Limits()) -> bool:
    """Whether `password` matches the crypt(3)-style `stored` hash of a table.

    bcrypt `$2a$`/`$2b$`/`$2y$` and SHA-crypt `$5$`/`$6$`; anything else
    raises UnknownScheme.  A hash that `limits` refuse, or that cannot be
    read, raises MalformedHash before any work.  Comparison is constant-time.
    """
    secret = password.encode("utf-8", "surrogateescape")
    if stored.startswith(("$2a$", "$2b$", "$2y$")):
        hash_work(stored, limits)
        # $2y$ is PHP's name for the fixed $2a$ (= $2b$); the hash is the same.
        normalised = "$2b$" + stored[4:] if stored.startswith("$2y$") else stored
        try:
            return bcrypt.checkpw(secret[:72], normalised.encode("ascii"))
        except ValueError:
            raise MalformedHash("unreadable bcrypt hash") from None
    if stored.startswith(("$5$", "$6$")):
        hash_work(stored, limits)
        computed = sha_crypt(secret, stored)
        return hmac.compare_digest(computed.encode("utf-8", "surrogateescape"),
                                   stored.encode("utf-8", "surrogateescape"))
    raise UnknownScheme(scheme_of(stored))


def verify_system(crypt: libcrypt.LibCrypt, password: str, stored: str,
                  limits: Limits = Limits()) -> bool:
    """Whether `password` matches a system (shadow) hash, by the system's libcrypt.

    UnknownScheme if the library cannot check that scheme; MalformedHash if
    `limits` refuse its cost (where the text shows it) or the library fails
    on it.
    """
    if crypt.checksalt(stored) in (libcrypt.Salt.INVALID, libcrypt.Salt.METHOD_DISABLED):
        raise UnknownScheme(scheme_of(stored))
    hash_work(stored, limits)
    secret = password.encode("utf-8", "surrogateescape")
    if len(secret) >= _CRYPT_MAX_PASSPHRASE:
        return False  # no system password is that long
    ok = crypt.verify(secret, stored)
    if ok is None:
        raise MalformedHash(f"libcrypt cannot compute this {scheme_of(stored)} hash")
    return ok


# --------------------------------------------------------------------------
# The system password database


def shadow_hash(user: str, path: Path = SHADOW_PATH) -> str | None:
    """The hash field of `user` in a shadow(5) file, or None if absent.

    Locked (`!...`) and password-less (`*`, `!`, empty) accounts return None:
    they can never authenticate.  Raises OSError if the file is unreadable.
    """
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            name, sep, rest = line.rstrip("\n").partition(":")
            if sep and name == user:
                field = rest.split(":", 1)[0]
                if not field or field.startswith(("!", "*")):
                    return None
                return field
    return None


# --------------------------------------------------------------------------
# The checker a listener uses

_SYSTEM: Final = object()  # "the system's libcrypt", loaded on first use


class Authenticator:
    """Checks AUTH credentials against one source (`auth [<table>]`).

    `table` None means system accounts (`shadow_path`, checked by `crypt`,
    by default the system's libcrypt; None: no libcrypt, every check is a
    tempfail).  Hash checks run in `pool`, within `limits`.
    `verify(password, stored)` is the one function that hashes, a seam tests
    may wrap to see what is computed.
    """

    def __init__(self, table: Table | None, pool: AuthPool, limits: Limits = Limits(), *,
                 shadow_path: Path = SHADOW_PATH, crypt: object = _SYSTEM) -> None:
        self.table = table
        self.pool = pool
        self.limits = limits
        self.shadow_path = shadow_path
        self.source = f"table {table.name}" if table is not None else f"system passwords {shadow_path}"
        self.crypt: libcrypt.LibCrypt | None = None
        self.verify: Callable[[str, str], bool]
        if table is not None:
            self.verify = functools.partial(verify_hash, limits=limits)
            cost = min(ENCRYPT_BCRYPT_COST, limits.auth_max_bcrypt_cost)
            self._dummy = f"$2b${cost:02d}$" + "." * 53
        else:
            self.crypt = libcrypt.system() if crypt is _SYSTEM else crypt  # type: ignore[assignment]
            self.verify = functools.partial(self._verify_system, limits=limits)
            self._dummy = self._system_default()
        self._seen: dict[str, Work] = {}
        self._counts: collections.Counter[Work] = collections.Counter()
        self._examples: dict[Work, str] = {}

    def _verify_system(self, password: str, stored: str, limits: Limits) -> bool:
        assert self.crypt is not None
        return verify_system(self.crypt, password, stored, limits)

    def _system_default(self) -> str:
        """A setting of the scheme and default cost the system writes new hashes with."""
        if self.crypt is None:
            return ""
        setting = self.crypt.gensalt()  # None: an old libcrypt, whose default was SHA-512
        try:
            if setting is not None:
                hash_work(setting, self.limits)
                return setting
        except MalformedHash:
            pass  # limits set below the system's own default cost
        return "$6$Postillion.dummy"

    async def check(self, user: str, password: str) -> AuthResult:
        """ok, permfail (wrong user or password, unknown scheme) or tempfail."""
        if not user or len(user) > MAX_FIELD or len(password) > MAX_FIELD or not password:
            return AuthResult.PERMFAIL
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in user) or ":" in user:
            return AuthResult.PERMFAIL
        if "\0" in password:
            return AuthResult.PERMFAIL  # C libraries would check only what precedes it
        try:
            if self.table is None:
                if self.crypt is None:
                    logger.warning("auth: user %s: system passwords need libcrypt (libxcrypt), "
                                   "which could not be loaded", printable(user))
                    return AuthResult.TEMPFAIL
                key = user
                stored = await self.pool.run(shadow_hash, user, self.shadow_path)
            elif self.table.serves(Service.AUTH):
                found = await self.table.check(Service.AUTH, f"{user}:{password}")
                return AuthResult.OK if found else AuthResult.PERMFAIL
            else:
                key = user.lower()
                value = await self.table.lookup(Service.CREDENTIALS, key)
                stored = value.secret if value is not None else None
            if stored is None:
                await self._check_dummy(password)
                return AuthResult.PERMFAIL
            try:
                ok = await self.pool.run(self.verify, password, stored)
            except UnknownScheme as e:
                logger.warning("auth: user %s in %s has a secret in an unsupported scheme (%s)",
                               printable(user), self.source, e)
                await self._check_dummy(password)
                return AuthResult.PERMFAIL
            except MalformedHash as e:
                logger.warning("auth: user %s in %s has a malformed secret: %s",
                               printable(user), self.source, e)
                return AuthResult.TEMPFAIL
        except LookupUnavailable as e:
            logger.warning("auth: credentials lookup for user %s failed: %s", printable(user), e.reason)
            return AuthResult.TEMPFAIL
        except OSError as e:
            logger.warning("auth: cannot read %s: %s", self.shadow_path, e.strerror or e)
            return AuthResult.TEMPFAIL
        except AuthBusy:
            logger.warning("auth: user %s: auth pool full (auth-threads %d busy, "
                           "auth-max-waiting %d waiting)", printable(user),
                           self.pool.threads, self.pool.max_waiting)
            return AuthResult.TEMPFAIL
        self._learn(key, stored)
        return AuthResult.OK if ok else AuthResult.PERMFAIL

    async def _check_dummy(self, password: str) -> None:
        """The work a real check would do, for a user who has no usable hash.

        Raises AuthBusy as a real check would.
        """
        try:
            await self.pool.run(self.verify, password, self._dummy)
        except (UnknownScheme, MalformedHash):
            pass  # not expected: the dummy is a hash already checked, or our own default

    def _learn(self, key: str, stored: str) -> None:
        """Count the Work of a hash that was checked; the dummy is the most common."""
        if key in self._seen or len(self._seen) >= MAX_REMEMBERED:
            return
        work = hash_work(stored, self.limits)
        self._seen[key] = work
        self._counts[work] += 1
        self._examples.setdefault(work, stored)
        self._dummy = self._examples[self._counts.most_common(1)[0][0]]


class Authenticators:
    """The daemon's AUTH checking: one AuthPool (`Limits.auth_threads`,
    `auth_max_waiting`) and one Authenticator per credentials source, shared
    by the listeners that name it, so that what one listener learns about a
    table's hashes serves them all."""

    def __init__(self, limits: Limits, system: Authenticator | None = None) -> None:
        """`system`: what checks system accounts, when not this process (an
        smtp process asks the parent, which alone may read /etc/shadow)."""
        self.limits = limits
        self.pool = AuthPool(limits.auth_threads, limits.auth_max_waiting)
        self._by_source: dict[str | None, Authenticator] = {}
        if system is not None:
            self._by_source[None] = system

    def get(self, table: Table | None) -> Authenticator:
        name = table.name if table is not None else None
        if name not in self._by_source:
            self._by_source[name] = Authenticator(table, self.pool, self.limits)
        return self._by_source[name]

    def close(self) -> None:
        self.pool.close()
