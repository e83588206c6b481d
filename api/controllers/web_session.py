"""The browser's sign-in: its refresh token in a cookie no script reads, and the endpoints that spend and clear it.

A sign-in through `POST /api/auth/login` with the header `X-Refresh-Delivery: cookie` answers
with an empty `refresh_token` and sets instead:

- `wl_refresh`: the refresh token, `HttpOnly`, `SameSite=Strict`, `Secure` over HTTPS, sent only
  to `POST /api/auth/web/refresh` (its `Path`);
- `wl_csrf`: a random value the page reads and sends back as `X-CSRF-Token` (double submit).

`POST /api/auth/web/refresh` spends the cookie's refresh token as `POST /api/auth/refresh` spends
one from a body, sets the next pair of cookies and answers with a new access token.
`POST /api/auth/web/signout` clears both cookies.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

import msgspec
import structlog
from litestar import Controller, Request, Response, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency

from api.controllers.auth_schemas import NO_STORE, SignedInUser, signed_in_user
from api.deps import IdentityDeps
from api.errors import forbidden_body
from api.guards import NO_CREDENTIALS
from domain.errors import AuthenticationRequired, RefreshTokenReused
from domain.identity_rules import SESSION_LIFETIME

log = structlog.get_logger(__name__)

REFRESH_COOKIE = "wl_refresh"
CSRF_COOKIE = "wl_csrf"
CSRF_HEADER = "X-CSRF-Token"
DELIVERY_HEADER = "X-Refresh-Delivery"
WEB_AUTH_PATH = "/api/auth/web"
REFRESH_PATH = f"{WEB_AUTH_PATH}/refresh"


class WebSession(msgspec.Struct, frozen=True, kw_only=True):
    """A new access token for the page; the refresh token went into its cookie."""

    access_token: str
    token_type: str
    expires_in: int
    user: SignedInUser


class SignedOut(msgspec.Struct, frozen=True, kw_only=True):
    message: str


def wants_cookie(request: Request[Any, Any, Any]) -> bool:
    """Whether a sign-in asked for its refresh token in a cookie instead of the body."""
    return request.headers.get(DELIVERY_HEADER, "").strip().lower() == "cookie"


def _secure(request: Request[Any, Any, Any]) -> bool:
    return request.url.scheme == "https"


def session_cookies(request: Request[Any, Any, Any], refresh_token: str) -> list[Cookie]:
    """The refresh cookie holding `refresh_token` and a new CSRF cookie, both for the session's lifetime."""
    secure, max_age = _secure(request), int(SESSION_LIFETIME.total_seconds())
    return [
        Cookie(key=REFRESH_COOKIE, value=refresh_token, path=REFRESH_PATH, httponly=True, samesite="strict",
               secure=secure, max_age=max_age),
        Cookie(key=CSRF_COOKIE, value=secrets.token_urlsafe(32), path="/", httponly=False, samesite="strict",
               secure=secure, max_age=max_age),
    ]  # fmt: skip


def cleared_cookies(request: Request[Any, Any, Any]) -> list[Cookie]:
    secure = _secure(request)
    return [
        Cookie(key=REFRESH_COOKIE, value="", path=REFRESH_PATH, httponly=True, samesite="strict", secure=secure,
               max_age=0),
        Cookie(key=CSRF_COOKIE, value="", path="/", httponly=False, samesite="strict", secure=secure, max_age=0),
    ]  # fmt: skip


def _csrf_holds(request: Request[Any, Any, Any]) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    header = request.headers.get(CSRF_HEADER, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), header.encode())


def _csrf_refused() -> Response[Any]:
    log.info("auth.web_csrf_refused")
    body = forbidden_body("X-CSRF-Token must repeat the wl_csrf cookie", "CSRF_TOKEN_INVALID", None)
    return Response(body, status_code=403, headers=NO_STORE)


class WebSessionController(Controller):
    path = WEB_AUTH_PATH
    tags = ["auth"]

    @post("/refresh", operation_id="refreshWebSession", status_code=200, opt={"public": True},
          security=NO_CREDENTIALS)  # fmt: skip
    async def refresh(
        self, request: Request[Any, Any, Any], identity_deps: NamedDependency[IdentityDeps]
    ) -> Response[WebSession | dict[str, Any]]:
        """Trade the `wl_refresh` cookie for a new access token and the next cookies; `X-CSRF-Token`
        must repeat the `wl_csrf` cookie (else 403 CSRF_TOKEN_INVALID, nothing spent). No cookie:
        401 AUTHENTICATION_REQUIRED; a spent, expired or ended one answers as `POST /api/auth/refresh`
        does (401 TOKEN_REUSED, TOKEN_EXPIRED, SESSION_ENDED, TOKEN_INVALID)."""
        if not _csrf_holds(request):
            return _csrf_refused()
        token = request.cookies.get(REFRESH_COOKIE)
        if not token:
            raise AuthenticationRequired("No refresh cookie came with the request: sign in")
        claims = await identity_deps.tokens.verify_refresh(token)
        try:
            grant = await identity_deps.identity.refresh(claims.session_id, claims.generation)
        except RefreshTokenReused:
            log.warning("auth.refresh_token_reused", session_id=str(claims.session_id), user_id=str(claims.user_id),
                        via="cookie")  # fmt: skip
            await identity_deps.reads.wait_identity()
            raise
        pair = identity_deps.tokens.issue(grant)
        answer = WebSession(access_token=pair.access_token, token_type=pair.token_type, expires_in=pair.expires_in,
                            user=signed_in_user(grant.user))  # fmt: skip
        return Response(answer, headers=NO_STORE, cookies=session_cookies(request, pair.refresh_token))

    @post("/signout", operation_id="clearWebSession", status_code=200, opt={"public": True}, security=NO_CREDENTIALS)
    async def signout(self, request: Request[Any, Any, Any]) -> Response[SignedOut | dict[str, Any]]:
        """Remove the page's cookies; `X-CSRF-Token` must repeat the `wl_csrf` cookie (else 403
        CSRF_TOKEN_INVALID, nothing cleared), so another site cannot sign the page out. The session
        itself ends with `POST /api/auth/logout`, which the page calls first with its access token."""
        if not _csrf_holds(request):
            return _csrf_refused()
        return Response(SignedOut(message="Cookies cleared"), headers=NO_STORE, cookies=cleared_cookies(request))
