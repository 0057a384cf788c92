"""An org's own provider credentials as the hot path uses them: read, decrypted, headers built.

The management API stores them (``management.providers``: encrypted with AES-256-GCM, bound
to their row); the key cache loads them here once per key-cache TTL, together with the key's
other settings, and keeps them in memory only.

A stored credential that cannot be decrypted (the encryption key changed or is unset, the
row was altered) is never skipped silently: skipping it would send that org's traffic with
the operator's shared key, billing the operator for a tenant who meant to pay. It is
reported in ``OrgCredentials.unreadable``, and the hot path answers that org's requests for
the provider with 503 naming it (``errors.CredentialUnreadable``) until the org stores its
key again. The log names org and provider only, never the value.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from cognitude.identity.crypto import DecryptionError, decrypt, row_aad

log = logging.getLogger("cognitude.credentials")

_SELECT = ("SELECT provider, ciphertext, base_url FROM provider_credentials "
           "WHERE org_id = $1")


@dataclass(frozen=True, slots=True)
class Credential:
    """An org's own key for a provider, with the headers built once and the base URL it
    goes to."""

    base_url: str | None  # None: the provider's configured base_url
    headers: dict[str, str]
    secret: bytes  # to scrub from upstream error bodies


@dataclass(frozen=True, slots=True)
class OrgCredentials:
    usable: dict[str, Credential] = field(default_factory=dict)  # provider → own key
    unreadable: frozenset[str] = frozenset()  # providers whose stored key does not decrypt


# (provider, key) → the request headers for it, as the provider's adapter builds them
# (``Providers.headers_for``): given by the lifespan, so identity knows no wire format.
HeadersFor = Callable[[str, str], dict[str, str]]


async def load_org_credentials(conn: asyncpg.Connection | asyncpg.Pool,
                               encryption_key: bytes | None, org_id: str,
                               headers_for: HeadersFor) -> OrgCredentials:
    """Every credential ``org_id`` stored, decrypted; the ones that do not decrypt (or all of
    them, without an encryption key) listed as unreadable.

    ``base_url`` was checked when written; DNS may have changed since, which the upstream
    session's resolver (``cognitude.egress``) catches at connect time.
    """
    usable: dict[str, Credential] = {}
    unreadable: set[str] = set()
    for r in await conn.fetch(_SELECT, org_id):
        provider = r["provider"]
        if encryption_key is None:
            log.warning("org %s stored a %s key but no encryption key is configured; its "
                        "requests to %s get 503 until it is set", org_id, provider, provider)
            unreadable.add(provider)
            continue
        try:
            key = decrypt(encryption_key, r["ciphertext"], row_aad(org_id, provider))
        except DecryptionError:
            log.warning("org %s: the stored %s key does not decrypt (encryption key changed, "
                        "or the row was altered); its requests to %s get 503", org_id,
                        provider, provider)
            unreadable.add(provider)
            continue
        base_url = r["base_url"]
        usable[provider] = Credential(base_url.rstrip("/") if base_url else None,
                                      headers_for(provider, key), key.encode())
    return OrgCredentials(usable, frozenset(unreadable))
