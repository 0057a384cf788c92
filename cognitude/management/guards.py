"""Who may call a management route: an org's own API key, or the operator key.

The org always comes from the key, never from a parameter; the operator key is compared in
constant time against its hash (``auth.admin_key_env``).
"""

from __future__ import annotations

import hmac

from starlette.requests import Request

from cognitude.errors import AuthenticationError, OrganizationDisabled
from cognitude.identity.apikeys import hash_key, token_from_headers
from cognitude.identity.keycache import DISABLED_MESSAGE, KeyInfo


async def require_key(request: Request) -> KeyInfo:
    """The caller's key on a Starlette route (management API, analytics, /v1/models):
    ``Authorization: Bearer`` or ``X-API-Key``; 401 otherwise. The org always comes from
    the key, never from a parameter."""
    headers = request.headers
    token = token_from_headers(headers.get("authorization", "").encode() or None,
                               headers.get("x-api-key", "").encode() or None)
    info = await request.app.state.cognitude.keys.resolve(token) if token is not None else None
    if info is None:
        raise AuthenticationError("Missing or invalid API key.")
    if info.disabled:
        raise OrganizationDisabled(DISABLED_MESSAGE)
    return info


def require_admin(request: Request) -> None:
    """The operator key (``auth.admin_key_env``), compared in constant time; 401 otherwise."""
    headers = request.headers
    token = token_from_headers(headers.get("authorization", "").encode() or None,
                               headers.get("x-api-key", "").encode() or None)
    expected = request.app.state.cognitude.secrets.admin_key_hash
    if not expected or token is None or not hmac.compare_digest(hash_key(token), expected):
        raise AuthenticationError("This endpoint needs the operator key.")
