"""One table from errors to HTTP responses, all in the API's standard error format."""

from __future__ import annotations

from typing import Any

import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from domain.errors import (
    Conflict,
    DomainError,
    InvalidRequest,
    NotFound,
    Unavailable,
    Unprocessable,
)

log = structlog.get_logger(__name__)

# The HTTP status of each kind of domain error; the error code comes from the error itself.
STATUS_OF_KIND: dict[type[DomainError], int] = {
    InvalidRequest: 400,
    NotFound: 404,
    Conflict: 409,
    Unprocessable: 422,
    Unavailable: 503,
}

HTTP_CODES = {
    400: "INVALID_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMIT_EXCEEDED",
    503: "SERVICE_UNAVAILABLE",
}


def error_body(status_code: int, detail: str, error_code: str, **extra: Any) -> dict[str, Any]:
    return {"detail": detail, "status_code": status_code, "error_code": error_code, **extra}


def _response(status_code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(content=body, status_code=status_code, headers=headers, media_type="application/json")


def handle_domain(request: Request[Any, Any, Any], exc: DomainError) -> Response[Any]:
    for kind in type(exc).__mro__:
        if kind in STATUS_OF_KIND:
            status_code = STATUS_OF_KIND[kind]
            headers = {"Retry-After": "5"} if status_code == 503 else None
            return _response(status_code, error_body(status_code, str(exc) or exc.code, exc.code), headers)
    return handle_unexpected(request, exc)


def handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status_code = exc.status_code
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationException) and exc.extra:
        extra["errors"] = exc.extra
    code = "VALIDATION_ERROR" if isinstance(exc, ValidationException) else HTTP_CODES.get(status_code, "HTTP_ERROR")
    if status_code >= 500:
        return handle_unexpected(request, exc)
    return _response(status_code, error_body(status_code, exc.detail, code, **extra), exc.headers)


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error("api.unexpected_error", path=request.url.path, method=request.method, exc_info=exc)
    return _response(500, error_body(500, "Internal server error", "INTERNAL_ERROR"))


EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {
    DomainError: handle_domain,
    HTTPException: handle_http,
    Exception: handle_unexpected,
}
