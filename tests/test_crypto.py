"""cognitude.crypto: AES-256-GCM round trip and row binding (no servers needed)."""

from __future__ import annotations

import os

import pytest

from cognitude.identity.crypto import NONCE_BYTES, DecryptionError, decrypt, encrypt, row_aad

KEY = os.urandom(32)
SECRET = "sk-test-0123456789abcdefghij"


def test_round_trip_and_fresh_nonce() -> None:
    aad = row_aad("org-a", "openai")
    a, b = encrypt(KEY, SECRET, aad), encrypt(KEY, SECRET, aad)
    assert a != b and a[:NONCE_BYTES] != b[:NONCE_BYTES]
    assert SECRET.encode() not in a
    assert len(a) == NONCE_BYTES + len(SECRET) + 16
    assert decrypt(KEY, a, aad) == decrypt(KEY, b, aad) == SECRET


@pytest.mark.parametrize("aad", [row_aad("org-b", "openai"), row_aad("org-a", "other"), b""])
def test_bound_to_its_row(aad: bytes) -> None:
    blob = encrypt(KEY, SECRET, row_aad("org-a", "openai"))
    with pytest.raises(DecryptionError) as info:
        decrypt(KEY, blob, aad)
    assert SECRET not in str(info.value)


def test_wrong_key_tampered_truncated() -> None:
    aad = row_aad("o", "p")
    blob = encrypt(KEY, SECRET, aad)
    with pytest.raises(DecryptionError):
        decrypt(os.urandom(32), blob, aad)
    flipped = bytearray(blob)
    flipped[NONCE_BYTES + 2] ^= 1
    with pytest.raises(DecryptionError):
        decrypt(KEY, bytes(flipped), aad)
    with pytest.raises(DecryptionError):
        decrypt(KEY, blob[:20], aad)


def test_key_length_checked_without_echo() -> None:
    bad = b"k" * 16
    with pytest.raises(ValueError) as info:
        encrypt(bad, SECRET, b"")
    assert "16" in str(info.value) and "kkkk" not in str(info.value)
