"""One table from errors to HTTP responses, all in the API's standard error format."""

from __future__ import annotations

from typing import Any

import structlog
from eventsourcing.persistence import IntegrityError
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from adapters.kasa_driver import DeviceUnreachable, DriverError, UnsupportedDevice
from domain.errors import (
    DeviceAlreadyExists,
    DeviceNotFound,
    DeviceRemoved,
    DomainError,
    InvalidAddress,
)

log = structlog.get_logger(__name__)

STATUS: dict[type[Exception], tuple[int, str]] = {
    InvalidAddress: (400, "INVALID_ADDRESS"),
    DeviceNotFound: (404, "DEVICE_NOT_FOUND"),
    DeviceRemoved: (404, "DEVICE_NOT_FOUND"),
    DeviceAlreadyExists: (409, "DEVICE_EXISTS"),
    IntegrityError: (409, "CONFLICT"),
    DeviceUnreachable: (422, "DEVICE_UNREACHABLE"),
    UnsupportedDevice: (422, "UNSUPPORTED_DEVICE"),
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


def handle_known(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    for kind in type(exc).__mro__:
        if kind in STATUS:
            status_code, code = STATUS[kind]
            return _response(status_code, error_body(status_code, str(exc) or code, code))
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
    DomainError: handle_known,
    DriverError: handle_known,
    IntegrityError: handle_known,
    HTTPException: handle_http,
    Exception: handle_unexpected,
}
