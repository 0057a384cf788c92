"""An org's own provider credentials: ``POST /providers/config``, ``GET /providers``,
``DELETE /providers/{provider}``.

Decisions:
- The key is encrypted at rest (AES-256-GCM, ``cognitude.crypto``) and bound to its row
  (AAD ``<org_id>:<provider>``). It is never returned, logged or echoed: responses carry a
  mask, and every validation message names the field, never its value.
- Without ``auth.encryption_key_env`` set, storing and listing answer 503 (there is nothing
  safe to store with); deleting still works.
- ``provider`` must be one of the config's providers: the org supplies a credential, the
  operator decides which upstreams exist.
- ``base_url`` is an SSRF vector (the proxy would send requests, with the org's key, wherever
  it points), so at write time it must be https and every address its host resolves to must
  be public. ``alerts.allow_private_targets = true`` (the operator's one switch for
  "outbound calls may reach private networks") lifts both rules, e.g. for a self-hosted model
  server on the LAN. DNS can change after the check, so the upstream session repeats it on
  every address it connects to (``cognitude.egress``).
- A change publishes ``org:<id>`` so every replica's key cache re-reads the org.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cognitude.errors import InvalidRequest, NotFound, ServiceUnavailable
from cognitude.identity.crypto import DecryptionError, decrypt, encrypt, row_aad
from cognitude.identity.invalidation import publish
from cognitude.management.common import field, json_body, json_response, reject_unknown, state
from cognitude.management.guards import require_key
from cognitude.management.limits import db_errors, error_responses, pool
from cognitude.providers.egress import address_of, is_public
from cognitude.state import AppState

log = logging.getLogger("cognitude.management.providers")

MIN_KEY_LEN = 8
MAX_KEY_LEN = 512
MAX_URL_LEN = 2048
MAX_PROVIDER_LEN = 100
RESOLVE_TIMEOUT_S = 3.0
_FIELDS = frozenset({"provider", "api_key", "base_url"})
# Names the actual variable (from the config), so the operator reading a client's 503 knows
# what to set without opening config.toml.
_NO_KEY = ("Provider credentials cannot be stored or read: the server has no encryption key "
           "(set the environment variable {name}, named by auth.encryption_key_env).")


def mask(key: str) -> str:
    """First 3 + … + last 4; short keys show only their last 2, so a mask never reveals most
    of a key."""
    return f"{key[:3]}…{key[-4:]}" if len(key) >= 16 else f"…{key[-2:]}"



def _encryption_key(st: AppState) -> bytes:
    key = st.secrets.encryption_key
    if key is None:
        raise ServiceUnavailable(_NO_KEY.format(name=st.cfg.auth.encryption_key_env),
                                 code="encryption_key_missing")
    return key


def _api_key(doc: dict[str, Any]) -> str:
    value = field(doc, "api_key", str, max_len=MAX_KEY_LEN)
    if len(value) < MIN_KEY_LEN:
        raise InvalidRequest(f"`api_key` must be at least {MIN_KEY_LEN} characters.",
                             param="api_key")
    # It becomes an HTTP header value: printable ASCII only (no spaces, no CR/LF injection).
    if not all(33 <= ord(c) <= 126 for c in value):
        raise InvalidRequest("`api_key` must be printable ASCII without spaces.",
                             param="api_key")
    return value


def _bad_url(message: str) -> InvalidRequest:
    return InvalidRequest(f"`base_url` {message}", param="base_url")


async def _resolve(host: str, port: int) -> list[str]:
    def lookup() -> list[str]:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return [str(info[4][0]) for info in infos]

    try:
        return await asyncio.wait_for(asyncio.to_thread(lookup), RESOLVE_TIMEOUT_S)
    except (OSError, TimeoutError, UnicodeError):
        raise _bad_url(f"host `{host}` cannot be resolved.") from None


async def check_base_url(url: str, allow_private: bool) -> str:
    """The URL without a trailing slash, if an org may point its traffic there; else 400."""
    if not all(33 <= ord(c) <= 126 for c in url):
        raise _bad_url("must be printable ASCII without spaces (punycode for IDN hosts).")
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError:  # e.g. an unbalanced "[" of an IPv6 literal
        raise _bad_url("is not a valid URL.") from None
    if parts.scheme not in ("https", "http") or not hostname:
        raise _bad_url("must be an absolute https:// URL.")
    if parts.scheme != "https" and not allow_private:
        raise _bad_url("must use https (the provider key travels with every request).")
    if parts.username is not None or parts.password is not None:
        # Credentials in the URL would be stored and shown unencrypted.
        raise _bad_url("must not contain credentials; pass the key as `api_key`.")
    if parts.query or parts.fragment:
        raise _bad_url("must not have a query or fragment.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise _bad_url("has an invalid port.") from None
    host = hostname
    if not allow_private:
        try:
            addrs = [str(ipaddress.ip_address(host))]  # a literal IP is checked as is
        except ValueError:
            addrs = await _resolve(host, port)
        for addr in addrs:
            if not is_public(address_of(addr)):
                raise _bad_url(
                    f"host `{host}` is a private, loopback or link-local address; refused "
                    "unless the operator sets alerts.allow_private_targets = true.")
    return url.rstrip("/")


async def configure_provider(request: Request) -> Response:
    info = await require_key(request)
    st = state(request)
    enc_key = _encryption_key(st)
    doc = await json_body(request)
    reject_unknown(doc, _FIELDS)
    names = tuple(p.name for p in st.cfg.providers)
    provider = field(doc, "provider", str, max_len=MAX_PROVIDER_LEN, choices=names)
    api_key = _api_key(doc)
    base_url = field(doc, "base_url", str, required=False, max_len=MAX_URL_LEN, nullable=True)
    if base_url is not None:
        base_url = await check_base_url(base_url, st.cfg.alerts.allow_private_targets)
    blob = encrypt(enc_key, api_key, row_aad(info.org_id, provider))
    with db_errors():
        row = await pool(st).fetchrow(
            "INSERT INTO provider_credentials (org_id, provider, ciphertext, base_url) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (org_id, provider) DO UPDATE SET "
            "ciphertext = EXCLUDED.ciphertext, base_url = EXCLUDED.base_url, updated_at = now() "
            "RETURNING updated_at", info.org_id, provider, blob, base_url)
    await publish(st.redis, st.keys, f"org:{info.org_id}")
    return json_response({"provider": provider, "api_key": mask(api_key), "base_url": base_url,
                          "updated_at": row["updated_at"].isoformat()}, status=201)


async def list_providers(request: Request) -> Response:
    info = await require_key(request)
    st = state(request)
    enc_key = _encryption_key(st)
    with db_errors():
        rows = await pool(st).fetch(
            "SELECT provider, ciphertext, base_url, updated_at FROM provider_credentials "
            "WHERE org_id = $1 ORDER BY provider", info.org_id)
    data = []
    for r in rows:
        item: dict[str, Any] = {"provider": r["provider"], "api_key": None,
                                "base_url": r["base_url"],
                                "updated_at": r["updated_at"].isoformat()}
        try:
            item["api_key"] = mask(decrypt(enc_key, r["ciphertext"],
                                           row_aad(info.org_id, r["provider"])))
        except DecryptionError:
            # Reported, never guessed at: the hot path answers this org's requests to the
            # provider with 503 (cognitude.credentials), never with the shared key.
            item["error"] = ("The stored key cannot be decrypted (encryption key changed, or "
                             "the row was altered); configure this provider again.")
        data.append(item)
    return json_response({"object": "list", "data": data})


async def delete_provider(request: Request) -> Response:
    info = await require_key(request)
    st = state(request)
    provider = request.path_params["provider"]
    if "\x00" in provider:  # cannot be stored, so cannot exist (and Postgres would raise)
        raise NotFound(f"No credentials configured for provider `{provider[:100]!r}`.",
                       param="provider")
    with db_errors():
        deleted = await pool(st).fetchval(
            "DELETE FROM provider_credentials WHERE org_id = $1 AND provider = $2 "
            "RETURNING provider", info.org_id, provider)
    if deleted is None:
        raise NotFound(f"No credentials configured for provider `{provider[:100]}`.",
                       param="provider")
    await publish(st.redis, st.keys, f"org:{info.org_id}")
    return json_response({"provider": provider, "deleted": True})


ROUTES: list[Route] = [
    Route("/providers/config", configure_provider, methods=["POST"]),
    Route("/providers", list_providers, methods=["GET"]),
    Route("/providers/{provider}", delete_provider, methods=["DELETE"]),
]


def _credential_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["provider", "api_key", "base_url", "updated_at"],
        "properties": {
            "provider": {"type": "string"},
            "api_key": {"type": ["string", "null"],
                        "description": "Masked; null when the stored key cannot be decrypted."},
            "base_url": {"type": ["string", "null"]},
            "updated_at": {"type": "string", "format": "date-time"},
            "error": {"type": "string"},
        },
    }


def openapi_paths(provider_names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 paths of these routes; ``provider_names`` (from config) become an
    enum for ``provider`` when given."""
    provider: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_PROVIDER_LEN}
    if provider_names is not None:
        provider = {"type": "string", "enum": list(provider_names)}
    body = {
        "type": "object",
        "additionalProperties": False,
        "required": ["provider", "api_key"],
        "properties": {
            "provider": provider,
            "api_key": {"type": "string", "minLength": MIN_KEY_LEN, "maxLength": MAX_KEY_LEN,
                        "pattern": "^[!-~]+$", "writeOnly": True},
            "base_url": {"type": ["string", "null"], "format": "uri",
                         "maxLength": MAX_URL_LEN,
                         "description": "https only; must resolve to public addresses unless "
                                        "alerts.allow_private_targets is set."},
        },
    }
    return {
        "/providers/config": {"post": {
            "summary": "Store (or replace) this organization's key for a provider",
            "operationId": "configureProvider",
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": body}}},
            "responses": {
                "201": {"description": "Stored; the key is returned masked",
                        "content": {"application/json": {"schema": _credential_schema()}}},
                **error_responses(400, 401, 413, 503),
            },
        }},
        "/providers": {"get": {
            "summary": "This organization's provider credentials (masked)",
            "operationId": "listProviders",
            "responses": {
                "200": {"description": "Credentials", "content": {"application/json": {
                    "schema": {"type": "object", "additionalProperties": False,
                               "required": ["object", "data"],
                               "properties": {"object": {"const": "list"},
                                              "data": {"type": "array",
                                                       "items": _credential_schema()}}}}}},
                **error_responses(401, 503),
            },
        }},
        "/providers/{provider}": {"delete": {
            "summary": "Remove this organization's key for a provider",
            "operationId": "deleteProvider",
            "parameters": [{"name": "provider", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {
                "200": {"description": "Deleted", "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False,
                    "required": ["provider", "deleted"],
                    "properties": {"provider": {"type": "string"},
                                   "deleted": {"const": True}}}}}},
                **error_responses(401, 404, 503),
            },
        }},
    }


OPENAPI_PATHS: dict[str, Any] = openapi_paths()
