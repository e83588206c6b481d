"""Who may call a route: every route handler declares it in its `opt`, and one guard checks it.

A handler declares exactly one of:

- `opt={"public": True}`: anyone, no credentials looked at;
- `opt={"permission": Permission.X}`: a principal holding X;
- `opt={"authenticated": True}`: any principal (the handler's use case decides the rest,
  e.g. that only a signed-in session, not an API key, may change a password).

A route that declares none of them is refused to everyone (fail closed), so a route
added without thought is not open by accident.

Authentication is done by the guard rather than by an authentication middleware: a
guard runs after routing, with the handler's `opt` at hand, and before the body is
parsed or any dependency resolved, so public routes cost nothing and a refused request
never reaches a handler. The principal comes from `Authorization: Bearer <access token>`
or, when there is no Authorization header, from `X-API-Key`; never from the query
string. It is left in `scope["user"]` and `scope["state"]["principal"]` (the rate
limiter reads it there) and handed to handlers by the `principal` dependency.
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog
from litestar import Request, Router
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityRequirement, SecurityScheme

from adapters.identity import TokenService
from api.errors import AccessNotDeclared
from domain.errors import AuthenticationRequired, DomainError
from domain.access import Permission, Principal
from domain.authentication import API_KEY_HEADER, authenticate_headers
from domain.identity_handlers import IdentityHandlers

log = structlog.get_logger(__name__)

PUBLIC = "public"
PERMISSION = "permission"
AUTHENTICATED = "authenticated"

NO_CREDENTIALS: list[SecurityRequirement] = [{}]
"""The OpenAPI `security` of a public operation: it may be called without credentials."""


class Access(msgspec.Struct, frozen=True, kw_only=True):
    """What a route handler declared: public, or a principal with `permission` (None: any principal)."""

    public: bool = False
    permission: Permission | None = None


BASIC_AUTH = "basic_auth"
"""Set in a route's `opt`, the route also takes basic auth; set in the request's state, the request's
basic credentials were accepted (`api.controllers.metrics.AcceptBasicAuth`)."""


def declared_access(handler: BaseRouteHandler) -> Access | None:
    """The access a handler declares in its `opt`, or None if it declares none (or contradicts itself).

    Litestar's own OPTIONS handler, added to every path, declares nothing: it answers to
    any principal, like the routes of its path.
    """
    opt = handler.opt or {}
    public = opt.get(PUBLIC) is True
    permission = opt.get(PERMISSION)
    authenticated = opt.get(AUTHENTICATED) is True
    if permission is not None and not isinstance(permission, Permission):
        return None
    declared = sum((public, permission is not None, authenticated))
    if declared == 0 and _generated_options(handler):
        return Access()
    if declared != 1:
        return None
    return Access(public=public, permission=permission)


def _generated_options(handler: BaseRouteHandler) -> bool:
    methods: set[str] = set(getattr(handler, "http_methods", ()))
    return methods == {"OPTIONS"} and getattr(handler, "include_in_schema", True) is False


class Authorizer:
    """The app-wide guard: checks each request against what its route handler declared."""

    def __init__(self, identity: IdentityHandlers, tokens: TokenService) -> None:
        self.identity = identity
        self.tokens = tokens

    async def __call__(self, connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        access = declared_access(handler)
        method = str(connection.scope.get("method", "GET"))
        if access is None:
            log.error("auth.route_not_declared", path=connection.scope.get("path"), method=method,
                      handler=handler.handler_name)  # fmt: skip
            raise AccessNotDeclared("this route declares no access rule; it is refused to everyone")
        if access.public:
            return
        if (handler.opt or {}).get(BASIC_AUTH) is True and connection.scope.get("state", {}).get(BASIC_AUTH) is True:
            return  # the route takes basic auth as configured, and the request's was checked and accepted
        credential = "bearer" if "authorization" in connection.headers else (
            "api_key" if API_KEY_HEADER in connection.headers else "none"
        )  # fmt: skip
        try:
            principal = await self.authenticate(connection)
            connection.scope["user"] = principal
            connection.scope["auth"] = principal.kind
            connection.scope.setdefault("state", {})["principal"] = principal
            if access.permission is not None:
                principal.require(access.permission)
            principal.check_method(method)
        except DomainError as exc:
            log.info("auth.refused", path=connection.scope.get("path"), method=method, credential=credential,
                     error_code=exc.code)  # fmt: skip
            raise

    async def authenticate(self, connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
        """The principal of the request's credentials. Raises AuthenticationRequired without any,
        and the token or key errors of `TokenService` and `IdentityHandlers` for bad ones."""
        return await authenticate_headers(connection.headers, self.tokens, self.identity)


def provide_principal(request: Request[Any, Any, Any]) -> Principal:
    """The principal the guard authenticated (a handler of a public route has none)."""
    principal = request.scope.get("user")
    if not isinstance(principal, Principal):
        raise AuthenticationRequired("this needs `Authorization: Bearer <access token>` or an `X-API-Key` header")
    return principal


def schema_config(version: str) -> OpenAPIConfig:
    """The OpenAPI document at `/schema`: public itself, and naming the two credentials the API takes."""
    return OpenAPIConfig(
        title="WattLedger",
        version=version,
        path="/schema",
        use_handler_docstrings=True,
        openapi_router=Router("/schema", route_handlers=[], include_in_schema=False, opt={PUBLIC: True}),
        components=Components(
            security_schemes={
                "BearerToken": SecurityScheme(
                    type="http", scheme="bearer", bearer_format="JWT",
                    description="The access token from POST /api/auth/login or /api/auth/refresh",
                ),
                "ApiKey": SecurityScheme(
                    type="apiKey", name="X-API-Key", security_scheme_in="header",
                    description="A key from POST /api/keys",
                ),
            }
        ),  # fmt: skip
        security=[{"BearerToken": []}, {"ApiKey": []}],
    )
