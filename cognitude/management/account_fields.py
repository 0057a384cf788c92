"""Request fields of the accounts endpoints (``accounts.py``), parsed and checked: each
failure is a 400 whose ``param`` names the field. The bounds come from ``accounts_openapi``,
which publishes the same ones, so the schema and the validation cannot drift apart.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request

from cognitude.errors import InvalidRequest, NotFound
from cognitude.management.accounts_openapi import (
    EMAIL_MAX,
    EMAIL_PATTERN,
    EXPIRES_AT_MAX_LEN,
    EXPIRES_DAYS_MAX,
    PASSWORD_MAX,
    PASSWORD_MIN,
)
from cognitude.management.common import field

# Deliberately simple (one @, no whitespace or control characters, a dot in the domain):
# deliverability is the mail server's business, this only catches typos and junk. The same
# pattern is published in the OpenAPI schema.
_EMAIL_RE = re.compile(EMAIL_PATTERN)


def text_field(doc: dict[str, Any], name: str, max_len: int, *, required: bool = True,
               default: str = "") -> str:
    value = field(doc, name, str, required=required, max_len=max_len, nullable=not required)
    if value is None:
        return default
    return str(value).strip()


def email_field(doc: dict[str, Any], *, required: bool) -> str | None:
    value = field(doc, "email", str, required=required, max_len=EMAIL_MAX,
                  nullable=not required)
    if value is None:
        return None
    email = str(value).strip().lower()
    if not _EMAIL_RE.match(email):
        raise InvalidRequest("`email` must be an email address like name@example.com.",
                             param="email")
    return email


def password_field(doc: dict[str, Any]) -> str:
    value: str = field(doc, "password", str, max_len=PASSWORD_MAX)
    if len(value) < PASSWORD_MIN:
        raise InvalidRequest(f"`password` must be at least {PASSWORD_MIN} characters.",
                             param="password")
    return value


def opt_int_field(doc: dict[str, Any], name: str, max_value: int) -> int | None:
    """An optional positive integer. JSON Schema counts 3.0 as an integer (and the published
    schema says "integer"), so an integral float is accepted as that integer."""
    value = doc.get(name)
    if isinstance(value, float) and value.is_integer():
        doc = {name: int(value)}
    result: int | None = field(doc, name, int, required=False, nullable=True, min_value=1,
                               max_value=max_value)
    return result


def expiry_field(doc: dict[str, Any]) -> datetime | None:
    at = field(doc, "expires_at", str, required=False, max_len=EXPIRES_AT_MAX_LEN,
               nullable=True)
    days = opt_int_field(doc, "expires_in_days", EXPIRES_DAYS_MAX)
    now = datetime.now(UTC)
    if at is not None and days is not None:
        raise InvalidRequest("Give either `expires_at` or `expires_in_days`, not both.",
                             param="expires_in_days")
    if days is not None:
        return now + timedelta(days=days)
    if at is None:
        return None
    try:
        parsed = datetime.fromisoformat(at)
        # A datetime without an offset is taken as UTC; converting here (not in the driver)
        # turns an out-of-range result into a 400 rather than a 500.
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        parsed = parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidRequest(
            "`expires_at` must be an ISO-8601 datetime such as 2030-01-31T00:00:00Z.",
            param="expires_at") from None
    if parsed <= now:
        raise InvalidRequest("`expires_at` must be in the future.", param="expires_at")
    return parsed


def path_id(request: Request, name: str, what: str) -> str:
    value: str = request.path_params[name]
    # Ids are uuid text (or short config names); anything else cannot exist, and NUL would
    # make Postgres raise instead of answer "no row".
    if not value or len(value) > 200 or "\x00" in value:
        raise NotFound(f"No {what} with id {value[:200]!r}.")
    return value
