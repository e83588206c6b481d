"""One table from errors to HTTP responses, all in the API's standard error format."""

from __future__ import annotations

from typing import Any

import eventsourcing.persistence as es
import psycopg
import structlog
from litestar import Request, Response
from litestar.exceptions import ClientException, HTTPException, ValidationException
from psycopg_pool import PoolClosed, PoolTimeout

from domain.errors import DomainError, status_of

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


def error_body(status_code: int, detail: str, error_code: str, **extra: Any) -> dict[str, Any]:
    return {"detail": detail, "status_code": status_code, "error_code": error_code, **extra}


def _response(status_code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(content=body, status_code=status_code, headers=headers, media_type="application/json")


def handle_domain(request: Request[Any, Any, Any], exc: DomainError) -> Response[Any]:
    """A domain error answers with its kind's status and its own code (`domain.errors`)."""
    status_code = status_of(exc)
    if status_code >= 500 and status_code != 503:
        return handle_unexpected(request, exc)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status_code == 503 else None
    required = getattr(exc, "required", None)
    extra = {"required_permission": required} if isinstance(required, str) else {}
    return _response(status_code, error_body(status_code, str(exc) or exc.code, exc.code, **extra), headers)


def handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status_code = exc.status_code
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationException) and exc.extra:
        extra["errors"] = exc.extra
    if isinstance(exc, RefusedInput):
        code = exc.error_code
    elif isinstance(exc, ValidationException):
        code = "VALIDATION_ERROR"
    else:
        code = HTTP_CODES.get(status_code, "HTTP_ERROR")
    if status_code >= 500:
        return handle_unexpected(request, exc)
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
