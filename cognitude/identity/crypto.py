"""Provider credentials at rest: AES-256-GCM with the key from ``auth.encryption_key_env``.

A stored value is ``nonce (12 bytes) || ciphertext || tag (16 bytes)``. The nonce is random
per encryption: 96-bit random nonces are safe for far more than the 2^32 messages one key
would ever see here (one per credential write).

Every ciphertext is bound to its row through the associated data (``aad``; callers pass
``row_aad(org_id, provider)``): a value copied into another org's or provider's row fails
the tag check instead of decrypting, so a database-level mix-up or a malicious row copy can
never hand org A's key to org B's traffic. Nothing here logs, and no error message carries
the plaintext.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32


class DecryptionError(Exception):
    """The value does not decrypt under this key and row (wrong key, tampered, or moved)."""


def row_aad(org_id: str, provider: str) -> bytes:
    return f"{org_id}:{provider}".encode()


def _cipher(key: bytes) -> AESGCM:
    if len(key) != KEY_BYTES:
        # The length only, never the key: this can end up in a log line.
        raise ValueError(f"encryption key must be {KEY_BYTES} bytes, got {len(key)}")
    return AESGCM(key)


def encrypt(key: bytes, plaintext: str, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + _cipher(key).encrypt(nonce, plaintext.encode(), aad)


def decrypt(key: bytes, blob: bytes, aad: bytes) -> str:
    cipher = _cipher(key)
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise DecryptionError("stored credential is truncated")
    try:
        raw = cipher.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag:
        raise DecryptionError(
            "stored credential does not decrypt (wrong encryption key, or the value was "
            "altered or copied from another row)") from None
    return raw.decode()
