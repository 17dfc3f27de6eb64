"""How much work a stored password hash asks for, read before any is done.

A crypt(3) hash carries its own cost: `$2b$31$...` asks for 2^31 bcrypt
rounds (days of a thread), `$6$rounds=999999999$...` for a billion SHA-512
rounds, `$y$` with a large N for gigabytes.  Whoever can write a credentials
table or /etc/shadow chooses it; a typo or a hostile entry must not tie up
the threads that check AUTH.  `hash_work` reads the scheme and its cost from
the hash text alone and raises `MalformedHash` when the cost is above the
listener's `Limits` (`auth_max_bcrypt_cost`, `auth_max_rounds`,
`auth_max_memory`) or cannot be read: the caller answers as for any malformed
value, a temporary failure.

The `Work` it returns is also how the checker makes an unknown user cost what
a known one does: two hashes with equal `Work` take the same time to check.

Schemes whose cost is fixed (DES, MD5-crypt `$1$`, NT `$3$`) or unknown to us
get `cost=None`; whether they can be checked at all is the verifier's call.
Nothing here returns or logs the hash beyond its scheme prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from postillion.config.model import Limits

#: The bcrypt cost `postillion encrypt` writes (2^12 rounds, ~0.25 s on a
#: 2020s core); also the unknown-user check's cost until a table shows its own.
ENCRYPT_BCRYPT_COST: Final = 12

_ITOA64: Final = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BCRYPT: Final = re.compile(r"\$2[abxy]\$([0-9]{2})\$")
_SHA_CRYPT: Final = re.compile(r"\$[56]\$rounds=([0-9]*)\$")
_SHA1_CRYPT: Final = re.compile(r"\$sha1\$([0-9]*)\$")
_SUN_MD5: Final = re.compile(r"\$md5,rounds=([0-9]*)\$")
_SUN_MD5_BASE: Final = 4096       # Sun MD5 adds rounds= to its own 4096
_MAX_DIGITS: Final = 12           # a longer decimal count is malformed, not parsed


class MalformedHash(ValueError):
    """A stored hash that cannot be checked as it is: unreadable, or asking
    for more work than the limits allow.  The text is the reason, never the
    hash."""


@dataclass(frozen=True, slots=True)
class Work:
    """What checking one hash costs.

    `scheme` is the prefix as written (`$2b$`, `$6$`, `$y$`, `_`, `des`);
    `cost` is in the scheme's own unit -- bcrypt: log2 of its rounds; SHA-crypt,
    `$sha1$`, Sun `$md5`, BSDi `_`: rounds; yescrypt: octets of memory
    (128*N*r) times t+1; scrypt: 128*N*r*p -- or None where the scheme's
    cost is fixed or unknown.
    """

    scheme: str
    cost: int | None


def scheme_of(stored: str) -> str:
    """The scheme prefix of a crypt(3) string, safe to log."""
    if stored.startswith("$"):
        end = stored.find("$", 1)
        head = stored[: end + 1] if end > 0 else stored[:8]
        return head.split(",", 1)[0] + ("$" if "," in head else "")
    if stored.startswith("_"):
        return "_"
    return "des" if len(stored) == 13 else "des/plain"


def hash_work(stored: str, limits: Limits = Limits()) -> Work:
    """The scheme and cost of `stored`; MalformedHash if above `limits` or unreadable."""
    scheme = scheme_of(stored)
    if scheme in ("$2a$", "$2b$", "$2x$", "$2y$"):
        cost = _count(_BCRYPT, stored, "bcrypt cost")
        return _bounded(Work(scheme, cost), cost, limits.auth_max_bcrypt_cost,
                        "bcrypt cost", "auth-max-bcrypt-cost")
    if scheme in ("$5$", "$6$"):
        # rounds= is optional (5000); Drepper's minimum 1000 is applied by the algorithm.
        rounds = _count(_SHA_CRYPT, stored, "rounds") if stored[3:10] == "rounds=" else 5000
        return _bounded(Work(scheme, rounds), rounds, limits.auth_max_rounds, "rounds",
                        "auth-max-rounds")
    if scheme == "$sha1$":
        rounds = _count(_SHA1_CRYPT, stored, "rounds")
        return _bounded(Work(scheme, rounds), rounds, limits.auth_max_rounds, "rounds",
                        "auth-max-rounds")
    if scheme == "$md5$":
        rounds = _SUN_MD5_BASE
        if stored.startswith("$md5,"):
            rounds += _count(_SUN_MD5, stored, "rounds")
        return _bounded(Work(scheme, rounds), rounds, limits.auth_max_rounds, "rounds",
                        "auth-max-rounds")
    if scheme == "_":
        rounds = _decode_fixed(stored[1:5]) if len(stored) >= 9 else -1
        if rounds < 1:
            raise MalformedHash("BSDi hash without a count")
        return _bounded(Work(scheme, rounds), rounds, limits.auth_max_rounds, "rounds",
                        "auth-max-rounds")
    if scheme in ("$y$", "$gy$"):
        memory = _yescrypt_memory(stored[len(scheme):])
        return _bounded(Work(scheme, memory), memory, limits.auth_max_memory,
                        "yescrypt memory", "auth-max-memory")
    if scheme == "$7$":
        memory = _scrypt_memory(stored[3:])
        return _bounded(Work(scheme, memory), memory, limits.auth_max_memory,
                        "scrypt memory", "auth-max-memory")
    return Work(scheme, None)


def _bounded(work: Work, cost: int, limit: int, what: str, keyword: str) -> Work:
    if cost > limit:
        raise MalformedHash(f"{what} {cost} above {keyword} {limit}")
    return work


def _count(pattern: re.Pattern[str], stored: str, what: str) -> int:
    m = pattern.match(stored)
    if m is None or not m.group(1) or len(m.group(1)) > _MAX_DIGITS:
        raise MalformedHash(f"unreadable {what}")
    return int(m.group(1))


# --------------------------------------------------------------------------
# yescrypt and scrypt parameters, encoded as libxcrypt's yescrypt-common.c does


def _atoi64(ch: str) -> int:
    index = _ITOA64.find(ch) if len(ch) == 1 else -1
    if index < 0:
        raise MalformedHash("bad character in yescrypt parameters")
    return index


def _decode_fixed(text: str) -> int:
    """Little-endian base 64, 6 bits a character (scrypt's r and p, BSDi's count)."""
    value = 0
    for shift, ch in enumerate(text):
        value |= _atoi64(ch) << (6 * shift)
    return value


def _decode_var(text: str, pos: int, minimum: int) -> tuple[int, int]:
    """yescrypt's variable-length unsigned integer at text[pos]; (value, next pos)."""
    if pos >= len(text):
        raise MalformedHash("truncated yescrypt parameters")
    c = _atoi64(text[pos])
    pos += 1
    value, start, end, chars, bits = minimum, 0, 47, 1, 0
    while c > end:
        value += (end + 1 - start) << bits
        start = end + 1
        end = start + (62 - end) // 2
        chars += 1
        bits += 6
    value += (c - start) << bits
    for _ in range(chars - 1):  # then the lower bits, most significant first
        if pos >= len(text):
            raise MalformedHash("truncated yescrypt parameters")
        bits -= 6
        value += _atoi64(text[pos]) << bits
        pos += 1
    return value, pos


def _yescrypt_memory(params: str) -> int:
    """128*N*r*(t+1) of a `$y$`/`$gy$` hash, from the text after the prefix:
    its memory, times its extra passes (p lanes share the memory)."""
    _flavor, pos = _decode_var(params, 0, 0)
    n_log2, pos = _decode_var(params, pos, 1)
    r, pos = _decode_var(params, pos, 1)
    p, t = 1, 0
    if n_log2 > 63:
        raise MalformedHash("yescrypt N out of range")
    if pos < len(params) and params[pos] != "$":
        have, pos = _decode_var(params, pos, 1)
        if have & ~0x3:
            # g (upgrades) and a ROM: work we cannot bound from here.
            raise MalformedHash("yescrypt parameters beyond N, r, p, t")
        if have & 1:
            p, pos = _decode_var(params, pos, 2)
        if have & 2:
            t, pos = _decode_var(params, pos, 1)
    if pos >= len(params) or params[pos] != "$":
        raise MalformedHash("unreadable yescrypt parameters")
    if p < 1:
        raise MalformedHash("yescrypt p out of range")
    return 128 * (1 << n_log2) * r * (t + 1)


def _scrypt_memory(params: str) -> int:
    """128*N*r*p of a `$7$` hash (its memory, times p sequential lanes): N as
    one log2 character, r and p as 5 characters each."""
    if len(params) < 11:
        raise MalformedHash("truncated scrypt parameters")
    n_log2 = _atoi64(params[0])
    r = _decode_fixed(params[1:6])
    p = _decode_fixed(params[6:11])
    if not 1 <= n_log2 <= 63 or r < 1 or p < 1:
        raise MalformedHash("scrypt parameters out of range")
    return 128 * (1 << n_log2) * r * p
