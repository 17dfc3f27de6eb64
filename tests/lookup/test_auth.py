"""Credential checks: SHA-crypt against Drepper's published vectors, bcrypt
variants, shadow(5) parsing, the Authenticator's three outcomes, and what it
computes for a user who does not exist."""

from __future__ import annotations

import asyncio
import logging

import bcrypt
import pytest

from postillion.config.model import Limits
from postillion.lookup import libcrypt
from postillion.lookup.auth import (
    Authenticator,
    AuthResult,
    UnknownScheme,
    sha_crypt,
    shadow_hash,
    verify_hash,
)
from postillion.lookup.authpool import AuthPool
from postillion.lookup.hashwork import ENCRYPT_BCRYPT_COST, MalformedHash, Work, hash_work
from postillion.table.table import open_table


@pytest.fixture
def pool():
    pool = AuthPool(2, 16)
    yield pool
    pool.close()

# "Unix crypt using SHA-256 and SHA-512", U. Drepper, test vectors.
SHA256_VECTORS = [
    ("$5$saltstring", "Hello world!", "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"),
    ("$5$rounds=10000$saltstringsaltstring", "Hello world!",
     "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA"),
    ("$5$rounds=5000$toolongsaltstring", "This is just a test",
     "$5$rounds=5000$toolongsaltstrin$Un/5jzAHMgOGZ5.mWJpuVolil07guHPvOW8mGRcvxa5"),
    ("$5$rounds=1400$anotherlongsaltstring",
     "a very much longer text to encrypt.  This one even stretches over morethan one line.",
     "$5$rounds=1400$anotherlongsalts$Rx.j8H.h8HjEDGomFU8bDkXm3XIUnzyxf12oP84Bnq1"),
    ("$5$rounds=77777$short", "we have a short salt string but not a short password",
     "$5$rounds=77777$short$JiO1O3ZpDAxGJeaDIuqCoEFysAe1mZNJRs3pw0KQRd/"),
    ("$5$rounds=123456$asaltof16chars..", "a short string",
     "$5$rounds=123456$asaltof16chars..$gP3VQ/6X7UUEW3HkBn2w1/Ptq2jxPyzV/cZKmF/wJvD"),
    ("$5$rounds=10$roundstoolow", "the minimum number is still observed",
     "$5$rounds=1000$roundstoolow$yfvwcWrQ8l/K0DAWyuPMDNHpIVlTQebY9l/gL972bIC"),
]
SHA512_VECTORS = [
    ("$6$saltstring", "Hello world!",
     "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"),
    ("$6$rounds=5000$toolongsaltstring", "This is just a test",
     "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0"),
]


@pytest.mark.parametrize("setting,password,expected", SHA256_VECTORS + SHA512_VECTORS)
def test_sha_crypt_published_vectors(setting, password, expected):
    assert sha_crypt(password.encode(), setting) == expected
    assert verify_hash(password, expected)
    assert not verify_hash(password + "x", expected)


def test_bcrypt_variants():
    stored = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
    for prefix in ("$2a$", "$2b$", "$2y$"):
        assert verify_hash("s3cret", prefix + stored[4:])
        assert not verify_hash("S3cret", prefix + stored[4:])
    # A bcrypt string that cannot be read is malformed (was: "no match"), as
    # a malformed table value is: AUTH answers 454 4.7.0, not 535.
    with pytest.raises(MalformedHash):
        verify_hash("s3cret", "$2b$04$garbage")
    with pytest.raises(MalformedHash):
        verify_hash("pw", "$6$rounds=12x$salt$hash")


@pytest.mark.parametrize("stored", ["$1$abc$def", "$y$j9T$abc$def", "abJnggxhB/yWI", "plain"])
def test_unknown_schemes(stored):
    with pytest.raises(UnknownScheme):
        verify_hash("pw", stored)


def test_shadow_parsing(tmp_path):
    shadow = tmp_path / "shadow"
    shadow.write_text("root:*:19000:0:99999:7:::\n"
                      f"gilles:{sha_crypt(b'pw', '$6$abcdefgh')}:19000:0:99999:7:::\n"
                      "locked:!$6$x$y:19000::::::\nempty::19000::::::\n")
    assert shadow_hash("gilles", shadow).startswith("$6$abcdefgh$")
    for user in ("root", "locked", "empty", "nobody"):
        assert shadow_hash(user, shadow) is None


def run(coro):
    return asyncio.run(coro)


def test_authenticator_against_system_accounts(tmp_path, pool):
    shadow = tmp_path / "shadow"
    shadow.write_text(f"gilles:{sha_crypt(b'pw', '$5$salt')}:19000::::::\n")
    auth = Authenticator(None, pool, shadow_path=shadow)
    assert run(auth.check("gilles", "pw")) is AuthResult.OK
    assert run(auth.check("gilles", "bad")) is AuthResult.PERMFAIL
    assert run(auth.check("nobody", "pw")) is AuthResult.PERMFAIL
    assert run(auth.check("gil\nles", "pw")) is AuthResult.PERMFAIL
    assert run(auth.check("gilles", "pw\0anything")) is AuthResult.PERMFAIL
    missing = Authenticator(None, pool, shadow_path=tmp_path / "missing")
    assert run(missing.check("gilles", "pw")) is AuthResult.TEMPFAIL


def test_authenticator_against_a_credentials_table(pool):
    stored = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()

    async def go():
        table = open_table("creds", "static", None, pairs=(("Gilles", f"gilles:{stored}"),
                                                           ("eric", sha_crypt(b"pw2", "$6$s"))),
                           is_map=True)
        await table.open()
        auth = Authenticator(table, pool)
        return [await auth.check("gilles", "pw"), await auth.check("GILLES", "pw"),
                await auth.check("gilles", "nope"), await auth.check("eric", "pw2"),
                await auth.check("nobody", "pw")]

    assert run(go()) == [AuthResult.OK, AuthResult.OK, AuthResult.PERMFAIL, AuthResult.OK,
                         AuthResult.PERMFAIL]


# --------------------------------------------------------------------------
# No user-enumeration oracle: what is computed for an unknown user


class Recorder:
    """Wraps an Authenticator's `verify` seam: the Work of each hash it is given."""

    def __init__(self, auth: Authenticator) -> None:
        self.works: list[Work] = []
        real = auth.verify

        def verify(password: str, stored: str) -> bool:
            self.works.append(hash_work(stored, Limits(auth_max_memory=1 << 40)))
            return real(password, stored)

        auth.verify = verify

    def last(self) -> Work:
        return self.works[-1]


def static_table(*pairs: tuple[str, str]):
    return open_table("creds", "static", None, pairs=pairs, is_map=True)


def test_unknown_user_hashes_like_a_wrong_password(pool):
    """Before any real hash is seen, the unknown-user check is bcrypt at the
    cost `postillion encrypt` writes (12; it was 10: a 4x faster refusal).
    Once the table's users are seen, it is their scheme and cost."""
    cost5 = bcrypt.hashpw(b"pw", bcrypt.gensalt(5)).decode()

    async def go():
        table = static_table(("gilles", cost5), ("anne", bcrypt.hashpw(b"a", bcrypt.gensalt(5)).decode()),
                             ("eric", sha_crypt(b"pw2", "$6$rounds=2000$salt")))
        await table.open()
        auth = Authenticator(table, pool)
        seen = Recorder(auth)
        assert await auth.check("nobody", "pw") is AuthResult.PERMFAIL
        first = seen.last()
        assert await auth.check("gilles", "wrong") is AuthResult.PERMFAIL
        known = seen.last()
        assert await auth.check("nobody", "pw") is AuthResult.PERMFAIL
        unknown = seen.last()
        return first, known, unknown

    first, known, unknown = run(go())
    assert first == Work("$2b$", ENCRYPT_BCRYPT_COST)
    assert known == unknown == Work("$2b$", 5)


def test_unknown_user_follows_the_common_hash_not_the_last_one(pool):
    """The model is the most common Work among distinct users checked: probing
    a user whose hash is cheaper, however often, does not steer it."""

    async def go():
        table = static_table(("gilles", bcrypt.hashpw(b"pw", bcrypt.gensalt(5)).decode()),
                             ("anne", bcrypt.hashpw(b"a", bcrypt.gensalt(5)).decode()),
                             ("eric", sha_crypt(b"pw2", "$6$rounds=2000$salt")))
        await table.open()
        auth = Authenticator(table, pool)
        seen = Recorder(auth)
        for user in ("gilles", "anne", "eric", "eric", "eric"):
            await auth.check(user, "wrong")
        await auth.check("nobody", "pw")
        return seen.works

    works = run(go())
    assert works[2:5] == [Work("$6$", 2000)] * 3
    assert works[-1] == Work("$2b$", 5)


def test_unknown_system_user_hashes_like_the_system(tmp_path, pool):
    """System passwords: before any is seen, the method and default cost the
    system's libcrypt writes new hashes with; then the users' own."""
    crypt = libcrypt.system()
    assert crypt is not None, "libcrypt (Debian libcrypt1) must be installed"
    preferred = crypt.gensalt()
    cheap = crypt.crypt(b"pw", "$6$rounds=3000$saltsalt")
    shadow = tmp_path / "shadow"
    shadow.write_text(f"marc:{cheap}:19000::::::\nlocked:!{cheap}:19000::::::\n")
    auth = Authenticator(None, pool, shadow_path=shadow)
    seen = Recorder(auth)
    assert run(auth.check("nobody", "pw")) is AuthResult.PERMFAIL
    assert seen.last() == hash_work(preferred)
    assert seen.last().scheme == crypt.preferred_method()
    assert run(auth.check("marc", "wrong")) is AuthResult.PERMFAIL
    assert seen.last() == Work("$6$", 3000)
    for user in ("nobody", "locked"):  # a locked account is no account
        assert run(auth.check(user, "pw")) is AuthResult.PERMFAIL
        assert seen.last() == Work("$6$", 3000)
    assert run(auth.check("marc", "pw")) is AuthResult.OK


def test_unsupported_scheme_still_costs_a_check(pool, caplog):
    async def go():
        table = static_table(("old", "$1$abcdefgh$0123456789012345678901"))
        await table.open()
        auth = Authenticator(table, pool)
        seen = Recorder(auth)
        result = await auth.check("old", "pw")
        return result, seen.works

    with caplog.at_level(logging.WARNING, "postillion.auth"):
        result, works = run(go())
    assert result is AuthResult.PERMFAIL
    assert works[-1] == Work("$2b$", ENCRYPT_BCRYPT_COST)
    assert "user \"old\" in table creds has a secret in an unsupported scheme ($1$)" in caplog.text
    assert "abcdefgh" not in caplog.text


# --------------------------------------------------------------------------
# Absurd work in a stored hash: a malformed value, 454 4.7.0, never hours


CHEAP = Limits(auth_max_bcrypt_cost=5, auth_max_rounds=2000, auth_max_memory=8 << 20)


@pytest.mark.parametrize("stored", [
    bcrypt.hashpw(b"pw", bcrypt.gensalt(6)).decode(),
    sha_crypt(b"pw", "$6$rounds=2001$salt"),
    sha_crypt(b"pw", "$5$rounds=5000$salt"),
    sha_crypt(b"pw", "$5$salt"),  # no rounds= is 5000
])
def test_table_hash_above_the_limits_is_tempfail(pool, caplog, stored):
    """Limits set just below these hashes, so that were the bound not applied
    the check would finish quickly as OK and fail the test loudly."""

    async def go():
        table = static_table(("gilles", stored))
        await table.open()
        return await Authenticator(table, pool, CHEAP).check("gilles", "pw")

    with caplog.at_level(logging.WARNING, "postillion.auth"):
        assert run(go()) is AuthResult.TEMPFAIL
    line = caplog.records[-1].getMessage()
    assert caplog.records[-1].levelno == logging.WARNING
    assert line.startswith('auth: user "gilles" in table creds has a malformed secret: ')
    assert "above auth-max-" in line
    assert stored not in caplog.text and stored.split("$")[-1] not in caplog.text


def test_system_hash_above_the_limits_is_tempfail(tmp_path, pool, caplog):
    crypt = libcrypt.system()
    assert crypt is not None
    salt = crypt.gensalt("$y$").split("$")[3]
    hashes = {"bee": bcrypt.hashpw(b"pw", bcrypt.gensalt(6)).decode(),
              "sha": crypt.crypt(b"pw", "$6$rounds=2001$saltsalt"),
              "yes": crypt.crypt(b"pw", f"$y$jAT${salt}"),  # 32 MiB
              "ok": crypt.crypt(b"pw", f"$y$j8T${salt}")}   # 8 MiB
    assert all(hashes.values())
    shadow = tmp_path / "shadow"
    shadow.write_text("".join(f"{user}:{h}:19000::::::\n" for user, h in hashes.items()))
    auth = Authenticator(None, pool, CHEAP, shadow_path=shadow)
    with caplog.at_level(logging.WARNING, "postillion.auth"):
        assert [run(auth.check(user, "pw")) for user in hashes] == [AuthResult.TEMPFAIL] * 3 + [AuthResult.OK]
    assert "yescrypt memory 33554432 above auth-max-memory 8388608" in caplog.text
    assert f"in system passwords {shadow} has a malformed secret" in caplog.text
    for stored in hashes.values():
        assert stored.split("$")[-1] not in caplog.text


def test_no_libcrypt_is_a_logged_tempfail(tmp_path, pool, caplog):
    shadow = tmp_path / "shadow"
    shadow.write_text(f"marc:{sha_crypt(b'pw', '$6$saltsalt')}:19000::::::\n")
    with caplog.at_level(logging.WARNING, "postillion.auth"):
        missing = libcrypt.load("postillion-no-such-library")
        assert missing is None
        auth = Authenticator(None, pool, shadow_path=shadow, crypt=missing)
        assert run(auth.check("marc", "pw")) is AuthResult.TEMPFAIL
    assert "no libpostillion-no-such-library found: system passwords cannot be checked" in caplog.text
    assert 'auth: user "marc": system passwords need libcrypt (libxcrypt), which could not be loaded' \
        in caplog.text
