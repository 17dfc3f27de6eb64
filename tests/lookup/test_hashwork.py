"""What a stored hash asks for, read from its text, and the default bounds."""

from __future__ import annotations

import bcrypt
import pytest

from postillion.config.model import MIB, Limits
from postillion.lookup import libcrypt
from postillion.lookup.auth import verify_hash
from postillion.lookup.hashwork import MalformedHash, Work, hash_work, scheme_of

BCRYPT_TAIL = "abcdefghijklmnopqrstuv" + "x" * 31


@pytest.mark.parametrize("stored,work", [
    ("$2b$12$" + BCRYPT_TAIL, Work("$2b$", 12)),
    ("$2y$14$" + BCRYPT_TAIL, Work("$2y$", 14)),
    ("$6$salt$hash", Work("$6$", 5000)),
    ("$5$rounds=1000000$salt$hash", Work("$5$", 1_000_000)),
    ("$y$j9T$salt$hash", Work("$y$", 16 * MIB)),           # Debian 12's default
    ("$gy$jDT$salt$hash", Work("$gy$", 256 * MIB)),         # libxcrypt cost 9
    ("$y$j75$salt$hash", Work("$y$", 1 * MIB)),             # libxcrypt cost 1
    ("$7$CU..../....salt$hash", Work("$7$", 64 * MIB)),
    ("$y$j8T0./$salt$hash", Work("$y$", 8 * MIB * 3)),      # p=2 (shares memory), t=2
    ("$sha1$232893$salt$hash", Work("$sha1$", 232893)),
    ("$md5,rounds=5000$salt$$hash", Work("$md5$", 9096)),
    ("_J9..salthash", Work("_", 725)),
    ("$1$salt$hash", Work("$1$", None)),
    ("abJnggxhB/yWI", Work("des", None)),
])
def test_work_read_from_the_text(stored, work):
    assert hash_work(stored) == work


def test_the_default_limits():
    """The defaults a careful administrator would choose: about a second of
    one thread at most (bcrypt 14, SHA-crypt 1,000,000 rounds, yescrypt
    256 MiB = libxcrypt cost 9), and 2 threads with 16 checks waiting."""
    limits = Limits()
    assert (limits.auth_max_bcrypt_cost, limits.auth_max_rounds, limits.auth_max_memory) \
        == (14, 1_000_000, 256 * MIB)
    assert (limits.auth_threads, limits.auth_max_waiting) == (2, 16)


@pytest.mark.parametrize("stored,reason", [
    ("$2b$31$" + BCRYPT_TAIL, "bcrypt cost 31 above auth-max-bcrypt-cost 14"),
    ("$2a$15$" + BCRYPT_TAIL, "bcrypt cost 15 above auth-max-bcrypt-cost 14"),
    ("$6$rounds=999999999$salt$hash", "rounds 999999999 above auth-max-rounds 1000000"),
    ("$5$rounds=1000001$salt$hash", "rounds 1000001 above auth-max-rounds 1000000"),
    ("$6$rounds=" + "9" * 5000 + "$salt$hash", "unreadable rounds"),
    ("$6$rounds=$salt$hash", "unreadable rounds"),
    ("$2b$x1$" + BCRYPT_TAIL, "unreadable bcrypt cost"),
    ("$sha1$4294967295$salt$hash", "rounds 4294967295 above auth-max-rounds 1000000"),
    ("$md5,rounds=4294967295$salt$$hash", "rounds 4294971391 above auth-max-rounds 1000000"),
    ("_zzzzsalthash", "rounds 16777215 above auth-max-rounds 1000000"),
    ("$y$jFT$salt$hash", "yescrypt memory 1073741824 above auth-max-memory 268435456"),
    ("$y$jaT$salt$hash", "yescrypt memory 2251799813685248 above"),    # N = 2^39
    ("$y$jCT0./$salt$hash", "yescrypt memory 402653184 above"),  # 128 MiB, p=2, t=2
    ("$y$j9T6$salt$hash", "yescrypt parameters beyond N, r, p, t"),   # a ROM
    ("$y$j9T", "unreadable yescrypt parameters"),
    ("$y$j9T%$salt$hash", "bad character in yescrypt parameters"),
    ("$7$zU..../....salt$hash", "above auth-max-memory"),
])
def test_absurd_or_unreadable_work_is_malformed(stored, reason):
    with pytest.raises(MalformedHash) as info:
        hash_work(stored)
    assert reason in str(info.value)
    assert "salt" not in str(info.value) and "hash" not in str(info.value)


def test_bounds_are_checked_before_any_work():
    """verify_hash refuses a cost-31 bcrypt or a billion SHA-crypt rounds at
    once: with the bound gone this test would hang, not pass."""
    with pytest.raises(MalformedHash):
        verify_hash("pw", bcrypt.gensalt(4).decode().replace("$04$", "$31$") + "x" * 31)
    with pytest.raises(MalformedHash):
        verify_hash("pw", "$6$rounds=999999999$salt$hash")


def test_scheme_of_never_shows_more_than_the_prefix():
    assert scheme_of("$6$rounds=5000$salt$hash") == "$6$"
    assert scheme_of("$md5,rounds=5000$salt$$hash") == "$md5$"
    assert scheme_of("$y$j9T$salt$hash") == "$y$"
    assert scheme_of("nodollarsatall") == "des/plain"


def test_the_parse_agrees_with_libcrypt():
    """Every scheme the system's libcrypt writes parses, with its default cost
    within the default limits."""
    crypt = libcrypt.system()
    assert crypt is not None, "libcrypt (Debian libcrypt1) must be installed"
    for prefix in ("$y$", "$gy$", "$7$", "$2b$", "$6$", "$5$", "$1$", "_", "$sha1", "$md5"):
        setting = crypt.gensalt(prefix)
        assert setting is not None, prefix
        stored = crypt.crypt(b"pw", setting)
        assert stored is not None, prefix
        work = hash_work(stored)
        assert work.scheme == (prefix + "$" if prefix in ("$sha1", "$md5") else prefix)
