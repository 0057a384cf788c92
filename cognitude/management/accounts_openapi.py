"""OpenAPI 3.1 description of the accounts endpoints (``accounts.py``), and the bounds both
share, so the published schema and the validation cannot drift apart.

``cognitude.openapi`` supplies ``#/components/schemas/Error`` (the OpenAI error envelope) and
the document-wide security (bearer / X-API-Key): operations here inherit it, the operator
endpoints expect the operator key in it, and registration and login opt out
(``security: []``).
"""

from __future__ import annotations

from typing import Any

NAME_MAX = 200
KEY_NAME_MAX = 100
EMAIL_MAX = 254
PASSWORD_MIN, PASSWORD_MAX = 8, 1024
EXPIRES_AT_MAX_LEN = 64
EXPIRES_DAYS_MAX = 3650
LIMIT_MAX = 2**31 - 1  # Postgres integer
LIMIT_FIELDS = ("requests_per_minute", "requests_per_hour", "requests_per_day")
# Python's whitespace (what str.strip() removes), spelled out because ECMA-262's \s is a
# different set; the name checks strip and refuse what is left empty.
_PY_SPACE = (r"\u0009-\u000d\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029"
             r"\u202f\u205f\u3000")
# Some non-blank character and no NUL (Postgres text cannot hold NUL).
_NONBLANK = rf"^[^\u0000]*[^\u0000{_PY_SPACE}][^\u0000]*$"
_NO_NUL = r"^[^\u0000]*$"
# Same meaning in Python's re and ECMA-262 (JSON Schema): no whitespace, control characters
# or extra @, and a dot in the domain.
_LOCAL = rf"[^@\u0000-\u001f\u007f{_PY_SPACE}]+"
_LABEL = rf"[^@.\u0000-\u001f\u007f{_PY_SPACE}]+"
EMAIL_PATTERN = rf"^{_LOCAL}@{_LABEL}(\.{_LABEL})+$"

_ERROR = {"$ref": "#/components/schemas/Error"}


def _err(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _obj(props: dict[str, Any], required: list[str] | None = None,
         **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props,
                           "required": required if required is not None else list(props)}
    return {**out, **extra}


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string"}}


_STR = {"type": "string"}
_TIME = {"type": "string", "format": "date-time"}
_TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
_LIMIT_OR_NULL = {"type": ["integer", "null"], "minimum": 1, "maximum": LIMIT_MAX}

_ORG_NAME = {"type": "string", "minLength": 1, "maxLength": NAME_MAX, "pattern": _NONBLANK}
_EMAIL = {"type": "string", "format": "email", "maxLength": EMAIL_MAX, "pattern": EMAIL_PATTERN,
          "description": "Stored lower-cased; unique across organizations (409 otherwise)."}

_CREDENTIALS = _obj({"organization_id": _STR,
                     "api_key": {**_STR, "description": "Shown once; store it now."}})
_LOGIN_CREDENTIALS = _obj({"organization_id": _STR,
                           "api_key": {**_STR, "description": "Shown once; store it now."},
                           "key_id": {**_STR, "description": "For `DELETE /auth/keys/{key_id}`."}})

_KEY_META = {
    "object": {"const": "api_key"},
    "id": _STR,
    "name": _STR,
    "prefix": {**_STR, "description": "The key's first characters, for recognising it."},
    "created_at": _TIME,
    "expires_at": _TIME_OR_NULL,
    "revoked_at": _TIME_OR_NULL,
    "active": {"type": "boolean", "description": "Neither revoked nor expired."},
    **{f: {"type": ["integer", "null"]} for f in LIMIT_FIELDS},
}
_KEY = _obj(_KEY_META)
_KEY_CREATED = _obj({**_KEY_META, "api_key": {**_STR, "description": "Shown once."}})

_ORG = _obj({
    "object": {"const": "organization"},
    "id": _STR,
    "name": _STR,
    "email": {"type": ["string", "null"]},
    "disabled": {"type": "boolean"},
    "created_at": _TIME,
    "key_count": {"type": "integer", "minimum": 0,
                  "description": "Keys that authenticate now (neither revoked nor expired)."},
})


def _list_of(item: dict[str, Any]) -> dict[str, Any]:
    return _obj({"object": {"const": "list"}, "data": {"type": "array", "items": item}})


_REGISTER_BODY = _obj(
    {"name": _ORG_NAME, "email": _EMAIL,
     "password": {"type": "string", "minLength": PASSWORD_MIN, "maxLength": PASSWORD_MAX,
                  "pattern": _NONBLANK,
                  "description": "Not all blank, no NUL. Hashed with scrypt; never stored or "
                                 "returned."}},
    additionalProperties=False)

_LOGIN_BODY = _obj(
    {"email": _EMAIL,
     "password": {"type": "string", "minLength": 1, "maxLength": PASSWORD_MAX,
                  "pattern": _NONBLANK},
     "key_name": {"type": ["string", "null"], "maxLength": KEY_NAME_MAX, "pattern": _NO_NUL,
                  "description": "Name of the new key (default \"login\")."}},
    required=["email", "password"], additionalProperties=False)

_CREATE_KEY_BODY = _obj(
    {"name": {"type": ["string", "null"], "maxLength": KEY_NAME_MAX, "pattern": _NO_NUL},
     "expires_at": {"type": ["string", "null"], "format": "date-time",
                    "maxLength": EXPIRES_AT_MAX_LEN,
                    "description": "ISO-8601, in the future; no offset means UTC."},
     "expires_in_days": {"type": ["integer", "null"], "minimum": 1,
                         "maximum": EXPIRES_DAYS_MAX},
     **{f: {**_LIMIT_OR_NULL, "description": "Per-key limit within the org's limits; those "
                                             "given must nest (minute <= hour <= day)."}
        for f in LIMIT_FIELDS}},
    required=[], additionalProperties=False,
    # expires_at and expires_in_days are alternatives.
    **{"not": {"required": ["expires_at", "expires_in_days"],
               "properties": {"expires_at": {"type": "string"},
                              "expires_in_days": {"type": "integer"}}}})

_ADMIN_ORG_BODY = _obj(
    {"name": _ORG_NAME, "email": {**_EMAIL, "type": ["string", "null"]}},
    required=["name"], additionalProperties=False)

_BAD_BODY = _err("Invalid JSON or a field failing validation; `param` names the field.")
_TOO_LARGE = _err("Body over 64 KiB.")
_NO_KEY = _err("Missing, unknown, revoked or expired API key, or disabled organization.")
_NO_OPERATOR = _err("Missing or wrong operator key.")
_DB_DOWN = _err("Postgres unavailable; retry.")
_THROTTLED = _err("Too many attempts this hour; `Retry-After` says when to retry.")
_SERVICE_DOWN = _err("Postgres unavailable, or Redis with `redis.fail_open` off; retry.")


def _set_disabled_op(disabled: bool) -> dict[str, Any]:
    verb = "Disable" if disabled else "Enable"
    return {"post": {
        "tags": ["admin"], "operationId": f"{verb.lower()}Organization",
        "summary": f"{verb} an organization (operator key)",
        "description": ("Its keys are refused (401) on every replica within a second."
                        if disabled else "Its keys work again on every replica at once."),
        "parameters": [_path_param("org_id", "Organization id.")],
        "responses": {"200": _ok("The organization.", _ORG), "401": _NO_OPERATOR,
                      "404": _err("No such organization."), "503": _DB_DOWN},
    }}


OPENAPI_PATHS: dict[str, Any] = {
    "/auth/register": {"post": {
        "tags": ["accounts"], "operationId": "register",
        "summary": "Create an organization and its first API key",
        "description": ("Disabled (403) when `auth.allow_registration` is false. At most "
                        "`auth.register_per_hour` attempts per client address per hour, "
                        "invalid ones included (429)."),
        "security": [],
        "requestBody": _body(_REGISTER_BODY),
        "responses": {"201": _ok("The organization and its key.", _CREDENTIALS),
                      "400": _BAD_BODY, "403": _err("Registration is disabled."),
                      "409": _err("Email already registered."), "413": _TOO_LARGE,
                      "429": _THROTTLED, "503": _SERVICE_DOWN},
    }},
    "/auth/login": {"post": {
        "tags": ["accounts"], "operationId": "login",
        "summary": "Create a new API key for the organization with this email and password",
        "description": ("Works whether or not registration is enabled. Unknown email, wrong "
                        "password and an account without a password all answer the same "
                        "401. At most `auth.login_per_hour` attempts per client address and "
                        "as many failed attempts per email per hour (429)."),
        "security": [],
        "requestBody": _body(_LOGIN_BODY),
        "responses": {"201": _ok("The organization and a new key.", _LOGIN_CREDENTIALS),
                      "400": _BAD_BODY, "401": _err("Invalid email or password."),
                      "403": _err("The organization is disabled."), "413": _TOO_LARGE,
                      "429": _THROTTLED, "503": _SERVICE_DOWN},
    }},
    "/auth/keys": {
        "post": {
            "tags": ["accounts"], "operationId": "createKey",
            "summary": "Create an API key for the caller's organization",
            "requestBody": _body(_CREATE_KEY_BODY),
            "responses": {"201": _ok("The key's metadata and the key, shown once.",
                                     _KEY_CREATED),
                          "400": _BAD_BODY, "401": _NO_KEY, "413": _TOO_LARGE,
                          "503": _DB_DOWN},
        },
        "get": {
            "tags": ["accounts"], "operationId": "listKeys",
            "summary": "List the caller's organization's keys (metadata only)",
            "responses": {"200": _ok("Keys, oldest first, revoked ones included.",
                                     _list_of(_KEY)),
                          "401": _NO_KEY, "503": _DB_DOWN},
        },
    },
    "/auth/keys/{key_id}": {"delete": {
        "tags": ["accounts"], "operationId": "revokeKey",
        "summary": "Revoke a key of the caller's organization",
        "description": ("Refused on every replica within a second, never accepted again. "
                        "The calling key may revoke itself."),
        "parameters": [_path_param("key_id", "Key id from `GET /auth/keys`.")],
        "responses": {
            "200": _ok("Revoked (again, if it already was).",
                       _obj({"id": _STR, "object": {"const": "api_key"},
                             "revoked": {"const": True}})),
            "401": _NO_KEY, "404": _err("No such key in the caller's organization."),
            "503": _DB_DOWN},
    }},
    "/admin/organizations": {
        "post": {
            "tags": ["admin"], "operationId": "createOrganization",
            "summary": "Create an organization and its first API key (operator key)",
                "requestBody": _body(_ADMIN_ORG_BODY),
            "responses": {"201": _ok("The organization and its key.", _CREDENTIALS),
                          "400": _BAD_BODY, "401": _NO_OPERATOR,
                          "409": _err("Email already registered."), "413": _TOO_LARGE,
                          "503": _DB_DOWN},
        },
        "get": {
            "tags": ["admin"], "operationId": "listOrganizations",
            "summary": "List every organization (operator key)",
                "responses": {"200": _ok("Organizations, oldest first.", _list_of(_ORG)),
                          "401": _NO_OPERATOR, "503": _DB_DOWN},
        },
    },
    "/admin/organizations/{org_id}/disable": _set_disabled_op(True),
    "/admin/organizations/{org_id}/enable": _set_disabled_op(False),
}
