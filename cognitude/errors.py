"""One exception tree, rendered once as OpenAI JSON.

    ProxyError                       500 server_error
    ├── InvalidRequest               400 invalid_request_error   (bad JSON, wrong types)
    ├── AuthenticationError          401 invalid_request_error / invalid_api_key
    ├── PermissionDenied             403 invalid_request_error
    │   └── OrganizationDisabled     403 invalid_request_error / organization_disabled
    ├── NotFound                     404 invalid_request_error
    │   └── ModelNotFound            404 invalid_request_error / model_not_found
    ├── MethodNotAllowed             405 invalid_request_error
    ├── PayloadTooLarge              413 invalid_request_error
    ├── RateLimited                  429 rate_limit_exceeded     (+ Retry-After)
    ├── ServiceUnavailable           503 server_error            (Redis/Postgres down, fail-closed)
    │   └── CredentialUnreadable     503 server_error / provider_credential_unreadable
    └── UpstreamError                502 upstream_error          (unreachable, bad reply)
        ├── UpstreamTimeout          504 timeout
        └── UpstreamHTTPError        <upstream's 4xx, or 503>    (in OpenAI shape)

Every error body is ``{"error": {"message", "type", "param", "code"}}``: the OpenAI SDK maps
the status to its own exception classes (429 → ``RateLimitError``). Messages never contain a
provider key: upstream bodies are passed through as the provider wrote them, and our own
messages name models and fields, never credentials.
"""

from __future__ import annotations

from typing import ClassVar

import orjson

JSON_HEADERS = [(b"content-type", b"application/json")]


class ProxyError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.instance_code = code if code is not None else self.code
        self.headers = headers or []

    @property
    def status_code(self) -> int:
        return self.status

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.param, self.instance_code)


class InvalidRequest(ProxyError):
    status = 400
    type = "invalid_request_error"


class AuthenticationError(ProxyError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(ProxyError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class OrganizationDisabled(PermissionDenied):
    code = "organization_disabled"


class NotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(ProxyError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(ProxyError):
    status = 429
    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"


class ServiceUnavailable(ProxyError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class CredentialUnreadable(ServiceUnavailable):
    """The org stored its own key for a provider and it cannot be decrypted: its requests
    to that provider stop here rather than go out with the operator's shared key."""

    code = "provider_credential_unreadable"


class UpstreamError(ProxyError):
    """An upstream that did not answer. ``retryable``: a transient failure (connect error,
    timeout, 408/429/5xx/529) that the next attempt of the plan may succeed past;
    ``retry_after_s``: how long the upstream asked to be left alone (Retry-After)."""

    status = 502
    type = "upstream_error"
    code = "upstream_unreachable"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: list[tuple[bytes, bytes]] | None = None, retryable: bool = True,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message, param=param, code=code, headers=headers)
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout"
    code = "upstream_timeout"


class UpstreamHTTPError(UpstreamError):
    """An upstream 4xx, passed through with the upstream's own status and OpenAI body."""

    code = "upstream_client_error"

    def __init__(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]], *,
                 retryable: bool = False, retry_after_s: float | None = None) -> None:
        super().__init__("upstream error", headers=headers, retryable=retryable,
                         retry_after_s=retry_after_s)
        self._status = status
        self._body = body

    @property
    def status_code(self) -> int:
        return self._status

    def body(self) -> bytes:
        return self._body


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> bytes:
    """The OpenAI error envelope; the SDK maps the HTTP status to its exception classes."""
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


STATUS_ERRORS: dict[int, type[ProxyError]] = {
    400: InvalidRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    429: RateLimited,
    503: ServiceUnavailable,
}


def for_status(status: int, message: str) -> ProxyError:
    """The ProxyError for a bare HTTP status (Starlette's own 404/405, HTTPException)."""
    return STATUS_ERRORS.get(status, ProxyError)(message)
