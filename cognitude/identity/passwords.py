"""Password hashing for organization accounts: scrypt from the standard library.

Stored as ``scrypt$n$r$p$salt_b64$hash_b64`` so the cost parameters can be raised later
without invalidating existing hashes (``verify_password`` reads them from the string).
Registration hashes and login verifies through the same per-loop semaphore, so neither a
registration flood nor a login flood can take more than ``_KDF_SLOTS`` threads and their
memory.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import weakref

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # ~16 MiB and ~50 ms per hash
_SALT_BYTES = 16
_DKLEN = 32
# OpenSSL's default 32 MiB cap is close to n=2**14,r=8's need; give headroom, and refuse
# stored parameters above it rather than let a tampered row allocate gigabytes.
_SCRYPT_MAXMEM = 64 * 1024 * 1024
# Concurrent KDF runs per event loop: bounds memory (16 MiB each) and keeps a registration
# flood from occupying every default-executor thread the rest of the app shares.
_KDF_SLOTS = 4
_kdf_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary())


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r, p=p,
                          maxmem=_SCRYPT_MAXMEM, dklen=_DKLEN)


def hash_password_sync(password: str) -> str:
    """``scrypt$n$r$p$salt_b64$hash_b64`` (blocks ~50 ms; use ``hash_password`` in async code)."""
    salt = os.urandom(_SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


# What an account without a password (or an unknown email) is checked against, so that a
# login costs one full KDF run whatever the email: answer time does not tell which emails are
# registered. Built from the current cost parameters, so it keeps costing what a real hash
# costs; no password matches it in practice (it needs a preimage of 32 zero bytes).
_DUMMY_HASH = "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P),
                        base64.b64encode(bytes(_SALT_BYTES)).decode(),
                        base64.b64encode(bytes(_DKLEN)).decode()])


def _slots() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    sem = _kdf_slots.get(loop)
    if sem is None:
        sem = _kdf_slots[loop] = asyncio.Semaphore(_KDF_SLOTS)
    return sem


async def hash_password(password: str) -> str:
    """``hash_password_sync`` off the event loop, at most ``_KDF_SLOTS`` at a time."""
    async with _slots():
        return await asyncio.to_thread(hash_password_sync, password)


async def check_password(stored: str | None, password: str) -> bool:
    """``verify_password`` off the event loop, sharing ``hash_password``'s KDF slots.

    ``stored`` None (unknown email, an account the operator created without a password)
    still runs one KDF, against ``_DUMMY_HASH``, and answers False.
    """
    async with _slots():
        ok = await asyncio.to_thread(verify_password, stored or _DUMMY_HASH, password)
    return ok and stored is not None


def verify_password(stored: str, password: str) -> bool:
    """Whether ``password`` matches a ``hash_password`` string, compared in constant time.

    Blocks ~50 ms: async code calls ``check_password``.
    """
    try:
        scheme, n_s, r_s, p_s, salt_b64, hash_b64 = stored.split("$")
        n, r, p = int(n_s), int(r_s), int(p_s)
        salt = base64.b64decode(salt_b64, validate=True)
        expected = base64.b64decode(hash_b64, validate=True)
    except ValueError:
        return False
    if scheme != "scrypt" or n < 2 or r < 1 or p < 1 or 128 * n * r * p > _SCRYPT_MAXMEM // 2:
        return False
    try:
        actual = hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r,
                                p=p, maxmem=_SCRYPT_MAXMEM, dklen=len(expected))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(actual, expected)
