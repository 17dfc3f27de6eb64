"""System passwords (`auth` with no table) checked by the system's libcrypt,
against real accounts made by useradd and chpasswd: every scheme the system
writes, yescrypt (Debian 12's `passwd`) first."""

from __future__ import annotations

import asyncio

import bcrypt
import pytest

from postillion.lookup import libcrypt
from postillion.lookup.auth import Authenticator, AuthResult
from postillion.lookup.authpool import AuthPool
from postillion.lookup.hashwork import hash_work

from ..sysuser import run, set_password, system_user

PASSWORD = "Tr1al-pw"  # 8 characters: DES uses no more


@pytest.fixture(scope="module")
def account():
    with system_user(PASSWORD) as user:
        yield user


@pytest.fixture
def auth():
    pool = AuthPool(2, 4)
    yield Authenticator(None, pool)
    pool.close()


def check(auth: Authenticator, user: str, password: str) -> AuthResult:
    return asyncio.run(auth.check(user, password))


def test_what_chpasswd_writes_by_default(account, auth):
    """PAM's choice (Debian 12: pam_unix yescrypt), whatever it is."""
    stored = set_password(account, PASSWORD)
    assert stored.startswith("$y$"), "Debian 12's PAM writes yescrypt"
    assert check(auth, account, PASSWORD) is AuthResult.OK
    assert check(auth, account, PASSWORD + "x") is AuthResult.PERMFAIL
    assert check(auth, account.upper(), PASSWORD) is AuthResult.PERMFAIL


def _libcrypt_hash(prefix: str) -> str:
    crypt = libcrypt.system()
    assert crypt is not None, "libcrypt (Debian libcrypt1) must be installed"
    setting = crypt.gensalt(prefix)
    assert setting is not None
    stored = crypt.crypt(PASSWORD.encode(), setting)
    assert stored is not None
    return stored


@pytest.mark.parametrize("options,scheme", [
    (("-c", "YESCRYPT"), "$y$"),
    (("-c", "YESCRYPT", "-s", "7"), "$y$"),
    (("-c", "SHA512"), "$6$"),
    (("-c", "SHA512", "-s", "20000"), "$6$"),
    (("-c", "SHA256"), "$5$"),
    (("-c", "MD5"), "$1$"),
    (("-c", "DES"), "des"),
    ("bcrypt", "$2b$"),
    ("$gy$", "$gy$"),
])
def test_every_scheme_the_system_writes(account, auth, options, scheme):
    if options == "bcrypt":  # chpasswd -c has no bcrypt: -e takes a hash as is
        stored = set_password(account, bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(5)).decode(), "-e")
    elif options == "$gy$":
        stored = set_password(account, _libcrypt_hash("$gy$"), "-e")
    else:
        stored = set_password(account, PASSWORD, *options)
    assert hash_work(stored).scheme == scheme
    assert check(auth, account, PASSWORD) is AuthResult.OK
    assert check(auth, account, "wrong-pw") is AuthResult.PERMFAIL


def test_a_locked_account_is_refused(account, auth):
    set_password(account, PASSWORD)
    assert check(auth, account, PASSWORD) is AuthResult.OK
    run("usermod", "--lock", account)
    try:
        assert check(auth, account, PASSWORD) is AuthResult.PERMFAIL
    finally:
        run("usermod", "--unlock", account)
