"""Authentication: first-run setup, sign-in, token refresh, sessions, one's own account and two-factor.

The shapes follow the Kasa Monitor API. Answers that carry a secret (tokens, a new TOTP
secret and its backup codes) are sent with `Cache-Control: no-store`; nothing here logs
a password, token, code or request body. Bodies are JSON of at most `MAX_AUTH_BODY` bytes:
another content type is refused (415), as a browser may send text/plain from any site
without asking first, and a larger body too (413).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from uuid import UUID

import msgspec
import structlog
from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.exceptions import ClientException
from litestar.params import FromPath, FromQuery, JSONBody

from adapters.identity import ALGORITHM, qr_png_data_uri
from api.controllers.auth_schemas import (
    NO_STORE,
    AccountView,
    ChangePasswordRequest,
    CodeRequest,
    JwtConfiguration,
    LoginAnswer,
    LoginRequest,
    LogoutAnswer,
    Me,
    PasswordChanged,
    RefreshAnswer,
    RefreshRequest,
    SecurityFeatures,
    SecurityStatus,
    SessionEndedAnswer,
    SessionsAnswer,
    SetupRequest,
    SetupStatus,
    StepUpRequest,
    TotpChanged,
    TotpSetup,
    TotpStatus,
    session_info,
    signed_in_user,
    step_up_of,
)
from api.controllers.web_session import session_cookies, wants_cookie
from api.deps import IdentityDeps
from api.guards import NO_CREDENTIALS
from api.ratelimit_rules import MAX_AUTH_BODY, SIGN_IN_ACCOUNT
from domain.errors import RefreshTokenReused, Unauthenticated
from domain.access import Permission, Principal
from domain.identity import user_id_for
from domain.identity_requests import Login, SetupAdmin
from domain.identity_rules import ACCESS_TOKEN_LIFETIME, MAX_SESSIONS, SESSION_LIFETIME
from projections.identity import list_sessions

log = structlog.get_logger(__name__)


def client_ip(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client else ""


def _is_json(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def json_bodies_only(request: Request[Any, Any, Any]) -> None:
    """415 for a request body not declared JSON."""
    has_body = request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
    if has_body and not _is_json(request.headers.get("content-type", "")):
        raise ClientException("Send the body as JSON (Content-Type: application/json)", status_code=415)


class AuthController(Controller):
    path = "/api/auth"
    tags = ["auth"]
    request_max_body_size = MAX_AUTH_BODY
    before_request = staticmethod(json_bodies_only)

    @get("/setup-required", operation_id="getSetupRequired", opt={"public": True}, security=NO_CREDENTIALS)
    async def setup_required(self, identity_deps: NamedDependency[IdentityDeps]) -> SetupStatus:
        """Whether first-run setup is still open (no administrator was ever created)."""
        return SetupStatus(setup_required=await identity_deps.identity.setup_required())

    @post("/setup", operation_id="setupFirstAdmin", status_code=201, opt={"public": True}, security=NO_CREDENTIALS)
    async def setup(self, data: JSONBody[SetupRequest], identity_deps: NamedDependency[IdentityDeps]) -> AccountView:
        """Create the first administrator. Open until it succeeds once: then, and for every
        request that lost a race with it, 409 SETUP_ALREADY_DONE."""
        user = await identity_deps.identity.setup(
            SetupAdmin(username=data.username, password=data.password, email=data.email, full_name=data.full_name)
        )
        log.info("auth.setup_done", user_id=str(user.user_id))
        return AccountView.of(user)

    @post("/login", operation_id="login", status_code=200, opt={"public": True}, security=NO_CREDENTIALS)
    async def login(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[LoginRequest],
        identity_deps: NamedDependency[IdentityDeps],
    ) -> Response[LoginAnswer]:
        """Sign in: an access token (30 minutes) and a refresh token (as long as the session, 7 days).
        With `X-Refresh-Delivery: cookie` the refresh token comes in an HttpOnly cookie instead of the
        body (whose `refresh_token` is then empty), for `POST /api/auth/web/refresh`.

        With two-factor authentication on, `totp_code` is needed (401 TOTP_REQUIRED without it).
        A user has at most 3 sessions: a fourth sign-in ends the oldest."""
        ip = client_ip(request)
        # The rate limiter counts a failure against the account judged here.
        request.scope.setdefault("state", {})[SIGN_IN_ACCOUNT] = user_id_for(data.username)
        command = Login(
            username=data.username, password=data.password, totp_code=data.totp_code, ip=ip,
            user_agent=request.headers.get("user-agent", ""),
        )  # fmt: skip
        try:
            grant = await identity_deps.identity.login(command)
        except Unauthenticated as exc:
            log.info("auth.sign_in_refused", error_code=exc.code, ip=ip)
            raise
        if grant.evicted:
            await identity_deps.reads.wait_projected(grant.position, projector="identity")
        pair = identity_deps.tokens.issue(grant)
        log.info("auth.signed_in", user_id=str(grant.user_id), session_id=str(grant.session_id), ip=ip,
                 evicted=len(grant.evicted))  # fmt: skip
        answer = LoginAnswer(
            access_token=pair.access_token, refresh_token=pair.refresh_token, token_type=pair.token_type,
            expires_in=pair.expires_in, user=signed_in_user(grant.user), session=session_info(grant),
        )  # fmt: skip
        if wants_cookie(request):
            # The web page's design: the refresh token goes where no script reads it (api/controllers/web_session.py).
            answer = msgspec.structs.replace(answer, refresh_token="")
            return Response(answer, headers=NO_STORE, cookies=session_cookies(request, pair.refresh_token))
        return Response(answer, headers=NO_STORE)

    @post("/refresh", operation_id="refreshTokens", status_code=200, opt={"public": True}, security=NO_CREDENTIALS)
    async def refresh(
        self, data: JSONBody[RefreshRequest], identity_deps: NamedDependency[IdentityDeps]
    ) -> Response[RefreshAnswer]:
        """Trade a refresh token for a new pair; the one presented is spent. Presenting a spent one
        again ends its session (401 TOKEN_REUSED): every token of it stops working."""
        claims = await identity_deps.tokens.verify_refresh(data.refresh_token)
        try:
            grant = await identity_deps.identity.refresh(claims.session_id, claims.generation)
        except RefreshTokenReused:
            log.warning("auth.refresh_token_reused", session_id=str(claims.session_id), user_id=str(claims.user_id))
            await identity_deps.reads.wait_identity()
            raise
        pair = identity_deps.tokens.issue(grant)
        answer = RefreshAnswer(
            access_token=pair.access_token, refresh_token=pair.refresh_token, token_type=pair.token_type,
            expires_in=pair.expires_in, user=signed_in_user(grant.user),
        )  # fmt: skip
        return Response(answer, headers=NO_STORE)

    @post("/logout", operation_id="logout", status_code=200, opt={"authenticated": True})
    async def logout(
        self,
        principal: NamedDependency[Principal],
        identity_deps: NamedDependency[IdentityDeps],
        everywhere: FromQuery[bool] = False,
        data: JSONBody[StepUpRequest | None] = None,
    ) -> LogoutAnswer:
        """End this session (with `?everywhere=true`, every session of the user, confirmed by
        `current_password` or `totp_code` in the body: else 403 STEP_UP_REQUIRED). Its tokens stop
        working before the answer is sent. API keys have no session: 403 SESSION_REQUIRED."""
        ended = await identity_deps.identity.logout(principal, everywhere=everywhere, step_up=step_up_of(data))
        if ended:
            await identity_deps.reads.wait_identity()
        log.info("auth.signed_out", user_id=str(principal.user_id), sessions=ended)
        return LogoutAnswer(message="Logged out successfully", sessions_terminated=ended)

    @get("/me", operation_id="getCurrentUser", opt={"authenticated": True})
    async def me(self, principal: NamedDependency[Principal], identity_deps: NamedDependency[IdentityDeps]) -> Me:
        """The caller's user, with the permissions this request has (a key's are cut down to its scope)."""
        user = await identity_deps.identity.account(principal)
        return Me(
            id=user.user_id, username=user.username, email=user.email, full_name=user.full_name, role=user.role,
            permissions=sorted(principal.permissions), is_active=user.active, totp_enabled=user.totp_enabled,
            auth=principal.kind, session_id=principal.session_id, key_id=principal.key_id, scope=principal.scope,
        )  # fmt: skip

    @get("/sessions", operation_id="listSessions", opt={"authenticated": True})
    async def sessions(
        self, principal: NamedDependency[Principal], identity_deps: NamedDependency[IdentityDeps]
    ) -> SessionsAnswer:
        """The caller's active sessions, oldest first; `is_current` marks the one of this request."""
        async with identity_deps.reads.pool.connection() as conn:
            found = await list_sessions(
                conn, principal.user_id, current=principal.session_id, now=datetime.now(timezone.utc)
            )
        return SessionsAnswer(sessions=found, total=len(found), max_allowed=MAX_SESSIONS)

    @delete(
        "/sessions/{session_id:uuid}", operation_id="terminateSession", status_code=200, opt={"authenticated": True}
    )
    async def terminate(
        self,
        session_id: FromPath[UUID],
        principal: NamedDependency[Principal],
        identity_deps: NamedDependency[IdentityDeps],
        data: JSONBody[StepUpRequest | None] = None,
    ) -> SessionEndedAnswer:
        """End one of the caller's sessions (with USERS_MANAGE, anyone's); its tokens stop working at once.
        A session other than the caller's own takes `current_password` or `totp_code` in the body
        (else 403 STEP_UP_REQUIRED); keys other than `admin`-scope ones: 403 SESSION_REQUIRED."""
        stored = await identity_deps.identity.end_session(principal, session_id, step_up_of(data))
        await identity_deps.reads.wait_projected(stored.position, projector="identity")
        return SessionEndedAnswer(message="Session terminated", session_id=session_id)

    @get("/security-status", operation_id="getSecurityStatus", opt={"permission": Permission.SYSTEM_CONFIG})
    async def security_status(self) -> SecurityStatus:
        """How tokens and sessions are configured (administrators)."""
        return SecurityStatus(
            jwt_configuration=JwtConfiguration(
                algorithm=ALGORITHM,
                access_token_expire_minutes=int(ACCESS_TOKEN_LIFETIME.total_seconds() // 60),
                refresh_token_expire_days=SESSION_LIFETIME.days,
            ),
            security_features=SecurityFeatures(
                token_refresh_enabled=True, session_management_available=True, audit_logging_enabled=True,
                structured_error_responses=True, two_factor_available=True, api_keys_available=True,
            ),  # fmt: skip
            max_sessions_per_user=MAX_SESSIONS,
        )

    @post("/change-password", operation_id="changePassword", status_code=200, opt={"authenticated": True})
    async def change_password(
        self,
        data: JSONBody[ChangePasswordRequest],
        principal: NamedDependency[Principal],
        identity_deps: NamedDependency[IdentityDeps],
    ) -> PasswordChanged:
        """Change one's own password (signed in, not with a key); every other session ends at once.
        API keys keep working unless `revoke_api_keys` is true. 422 WRONG_PASSWORD when
        `current_password` is wrong, 422 PASSWORD_POLICY for a weak new one."""
        if data.revoke_api_keys:
            # The keys to revoke are those the identity read model lists: let it catch up first.
            await identity_deps.reads.wait_identity()
        stored = await identity_deps.identity.change_password(
            principal, data.current_password, data.new_password, revoke_api_keys=data.revoke_api_keys
        )
        await identity_deps.reads.wait_projected(stored.position, projector="identity")
        if data.revoke_api_keys:
            return PasswordChanged(message="Password changed; your other sessions were ended and your API keys revoked")
        return PasswordChanged(message="Password changed; your other sessions were ended")

    @get("/2fa/status", operation_id="getTwoFactorStatus", opt={"authenticated": True})
    async def totp_status(
        self, principal: NamedDependency[Principal], identity_deps: NamedDependency[IdentityDeps]
    ) -> TotpStatus:
        """Whether sign-in asks for a second factor."""
        return TotpStatus(enabled=(await identity_deps.identity.account(principal)).totp_enabled)

    @post("/2fa/setup", operation_id="setupTwoFactor", status_code=200, opt={"authenticated": True})
    async def totp_setup(
        self,
        principal: NamedDependency[Principal],
        identity_deps: NamedDependency[IdentityDeps],
        data: JSONBody[StepUpRequest | None] = None,
    ) -> Response[TotpSetup]:
        """Start two-factor set-up, confirmed by `current_password` in the body (else 403 STEP_UP_REQUIRED,
        401 INVALID_CREDENTIALS when wrong): a new secret (also as an otpauth URI and a QR code) and backup
        codes, shown this once. It is in force after a code is verified with POST /api/auth/2fa/verify."""
        enrollment = await identity_deps.identity.totp_setup(principal, step_up_of(data))
        answer = TotpSetup(
            secret=enrollment.secret, otpauth_uri=enrollment.otpauth_uri,
            qr_code=qr_png_data_uri(enrollment.otpauth_uri), backup_codes=enrollment.backup_codes,
        )  # fmt: skip
        return Response(answer, headers=NO_STORE)

    @post("/2fa/verify", operation_id="verifyTwoFactor", status_code=200, opt={"authenticated": True})
    async def totp_verify(
        self, data: JSONBody[CodeRequest], principal: NamedDependency[Principal], identity_deps: NamedDependency[IdentityDeps]
    ) -> TotpChanged:
        """Turn two-factor authentication on with a current code of the set-up's secret."""
        stored = await identity_deps.identity.totp_verify(principal, data.token)
        await identity_deps.reads.wait_projected(stored.position, projector="identity")
        return TotpChanged(enabled=True, message="Two-factor authentication is on")

    @post("/2fa/disable", operation_id="disableTwoFactor", status_code=200, opt={"authenticated": True})
    async def totp_disable(
        self, data: JSONBody[CodeRequest], principal: NamedDependency[Principal], identity_deps: NamedDependency[IdentityDeps]
    ) -> TotpChanged:
        """Turn two-factor authentication off, given a current code or an unused backup code."""
        stored = await identity_deps.identity.totp_disable(principal, data.token)
        await identity_deps.reads.wait_projected(stored.position, projector="identity")
        return TotpChanged(enabled=False, message="Two-factor authentication is off")
