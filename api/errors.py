"""One table from errors to HTTP responses, all in the API's standard error format."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import eventsourcing.persistence as es
import psycopg
import structlog
from litestar import Request, Response
from litestar.exceptions import ClientException, HTTPException, PermissionDeniedException, ValidationException
from psycopg_pool import PoolClosed, PoolTimeout

from domain.errors import (
    Conflict,
    DomainError,
    Forbidden,
    InvalidRequest,
    NotFound,
    TooManyRequests,
    Unauthenticated,
    Unavailable,
    Unprocessable,
)

log = structlog.get_logger(__name__)

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

STATUS_OF_KIND: dict[type[DomainError], int] = {
    InvalidRequest: 400,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    Unprocessable: 422,
    Unavailable: 503,
    TooManyRequests: 429,
}
"""The status of each kind of domain error (HTTP numbering, used by REST and by NATS replies alike)."""


def status_of(error: DomainError) -> int:
    """The status a domain error answers with: its nearest kind's, else 500."""
    for kind in type(error).__mro__:
        if kind in STATUS_OF_KIND:
            return STATUS_OF_KIND[kind]
    return 500


RETRY_AFTER_S = 5
DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
# Set in a request's state when it failed only because its database connection was lost.
CONNECTION_LOST_FLAG = "wattledger_connection_lost"

_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, es.OperationalError, es.InterfaceError)
_BAD_VALUE = (psycopg.DataError, es.DataError)
# Server-side codes of a connection that is gone, or not yet accepting queries.
_LOST_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


def connection_lost(exc: BaseException) -> bool:
    """Whether `exc` says only that a database connection broke, so the same read on a new one may succeed.

    Pool timeouts are not: the pool already waited for a connection. The event store wraps the
    driver's error, and has retried its reads itself before giving up.
    """
    if isinstance(exc, (PoolTimeout, PoolClosed)):
        return False
    if isinstance(exc, (es.OperationalError, es.InterfaceError)):
        return exc.__cause__ is not None and connection_lost(exc.__cause__)
    if isinstance(exc, psycopg.InterfaceError):
        return True
    if isinstance(exc, psycopg.OperationalError):
        return exc.sqlstate is None or exc.sqlstate.startswith("08") or exc.sqlstate in _LOST_SQLSTATES
    return False


class RefusedInput(ClientException):
    """Input refused at the edge before any handler sees it, with its own error code."""

    def __init__(self, detail: str, error_code: str) -> None:
        super().__init__(detail=detail, status_code=400)
        self.error_code = error_code


class AccessNotDeclared(PermissionDeniedException):
    """A route that declares neither a permission nor that it is public: refused to everyone."""

    error_code = "ACCESS_NOT_DECLARED"


def error_body(status_code: int, detail: str, error_code: str, **extra: Any) -> dict[str, Any]:
    return {"detail": detail, "status_code": status_code, "error_code": error_code, **extra}


LOGIN_PAGE = "/login"
# Required with every 401 (RFC 9110); both credentials are accepted.
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="wattledger", ApiKey header="X-API-Key"'}
FORBIDDEN_MESSAGE = "You don't have permission to access this resource"
# error_code of a 401 -> its `error` and the message a client may show as is.
_UNAUTHENTICATED: dict[str, tuple[str, str]] = {
    "AUTHENTICATION_REQUIRED": ("authentication_required", "Please log in, or send an API key, to use this resource."),
    "TOKEN_EXPIRED": ("authentication_expired", "Your session has expired. Please log in again."),
    "SESSION_ENDED": ("authentication_expired", "Your session has ended. Please log in again."),
    "TOKEN_REUSED": ("authentication_expired", "Your session was ended for safety. Please log in again."),
    "TOKEN_INVALID": ("authentication_invalid", "Your credentials are not valid. Please log in again."),
    "INVALID_API_KEY": ("authentication_invalid", "The API key is not valid."),
    "ACCOUNT_DISABLED": ("account_disabled", "This account is deactivated."),
    "INVALID_CREDENTIALS": ("authentication_failed", "Wrong user name or password."),
    "TOTP_REQUIRED": ("authentication_failed", "Enter the code from your authenticator app, or a backup code."),
    "INVALID_TOTP_CODE": ("authentication_failed", "The code is wrong or was already used."),
}


def unauthenticated_body(detail: str, error_code: str) -> dict[str, Any]:
    """The structured 401: the standard fields plus `error`, `message`, `timestamp`, `redirect_to`."""
    error, message = _UNAUTHENTICATED.get(error_code, ("authentication_failed", "Authentication failed."))
    timestamp = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    return error_body(401, detail, error_code, error=error, message=message, timestamp=timestamp,
                      redirect_to=LOGIN_PAGE)  # fmt: skip


def forbidden_body(detail: str, error_code: str, required_permission: str | None) -> dict[str, Any]:
    """The structured 403: the standard fields plus `error`, `message`, `required_permission` (null when
    no permission would help, e.g. a read-only key that tried to write)."""
    return error_body(403, detail, error_code, error="authorization_failed", message=FORBIDDEN_MESSAGE,
                      required_permission=required_permission)  # fmt: skip


def _response(status_code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(content=body, status_code=status_code, headers=headers, media_type="application/json")


def handle_domain(request: Request[Any, Any, Any], exc: DomainError) -> Response[Any]:
    """A domain error answers with its kind's status and its own code (`domain.errors`)."""
    status_code = status_of(exc)
    if status_code >= 500 and status_code != 503:
        return handle_unexpected(request, exc)
    detail = str(exc) or exc.code
    if status_code == 401:
        return _response(401, unauthenticated_body(detail, exc.code), CHALLENGE)
    if status_code == 403:
        required = getattr(exc, "required", None)
        return _response(403, forbidden_body(detail, exc.code, required if isinstance(required, str) else None))
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status_code == 503 else None
    return _response(status_code, error_body(status_code, detail, exc.code), headers)


VALIDATION_STATUS = "validation_status"
"""A route's `opt` key for the status its schema violations answer, where its contract is not 422."""


def validation_status(request: Request[Any, Any, Any], exc: ValidationException) -> int:
    """422 for a request whose body, query or headers break the route's schema (wrong type, missing
    field or parameter, constraint), as the Kasa Monitor API answers; 400 for a malformed request: a
    path value the route cannot parse, or a multipart body without its boundary. A route may
    declare another status for its schema violations in `opt` (`VALIDATION_STATUS`)."""
    errors = exc.extra if isinstance(exc.extra, list) else []
    sources = {e.get("source") for e in errors if isinstance(e, dict)}
    missing_parameter = isinstance(exc.__cause__, KeyError)
    if "path" in sources or not (sources or missing_parameter):
        return 400
    handler = request.scope.get("route_handler")
    declared = handler.opt.get(VALIDATION_STATUS) if handler is not None else None
    return declared if isinstance(declared, int) else 422


def handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status_code = exc.status_code
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationException) and exc.extra:
        extra["errors"] = exc.extra
    if isinstance(exc, (RefusedInput, AccessNotDeclared)):
        code = exc.error_code
    elif isinstance(exc, ValidationException):
        code = "VALIDATION_ERROR"
        status_code = validation_status(request, exc)
    else:
        code = HTTP_CODES.get(status_code, "HTTP_ERROR")
    if status_code >= 500:
        return handle_unexpected(request, exc)
    if status_code == 401:
        body = unauthenticated_body(exc.detail, "AUTHENTICATION_REQUIRED")
        return _response(401, body, {**CHALLENGE, **(exc.headers or {})})
    if status_code == 403:
        body = forbidden_body(exc.detail, "INSUFFICIENT_PERMISSIONS" if code == "FORBIDDEN" else code, None)
        return _response(403, body, exc.headers)
    return _response(status_code, error_body(status_code, exc.detail, code, **extra), exc.headers)


def handle_database(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Lost or unreachable database: 503 with Retry-After. A value the database refuses: 400."""
    if isinstance(exc, _UNAVAILABLE) or type(exc) is es.DatabaseError:
        lost = connection_lost(exc)
        if lost:
            request.scope.setdefault("state", {})[CONNECTION_LOST_FLAG] = True
        (log.info if lost else log.warning)(
            "api.database_unavailable",
            path=request.url.path,
            method=request.method,
            error=type(exc).__name__,
            reason=str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "",
        )
        body = error_body(503, "The database is unavailable; retry shortly", DATABASE_UNAVAILABLE)
        return _response(503, body, {"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(exc, _BAD_VALUE):
        log.info("api.value_refused_by_database", path=request.url.path, method=request.method, error=str(exc)[:300])
        return _response(400, error_body(400, "The request holds a value that cannot be stored or searched for",
                                         "INVALID_VALUE"))
    return handle_unexpected(request, exc)


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error("api.unexpected_error", path=request.url.path, method=request.method, exc_info=exc)
    return _response(500, error_body(500, "Internal server error", "INTERNAL_ERROR"))


EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {
    DomainError: handle_domain,
    HTTPException: handle_http,
    psycopg.Error: handle_database,
    es.PersistenceError: handle_database,
    Exception: handle_unexpected,
}
