"""The bodies the authentication, user and key routes take and answer with, and their field types.

Request bodies forbid unknown fields; passwords, codes and names carry the bounds the
identity rules check, so they show in the schema.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec

from domain.access import Permission, Role, Scope
from domain.identity_requests import SessionGrant, StepUp, UserSummary
from domain.identity_rules import MAX_PASSWORD_LENGTH, SESSION_LIFETIME
from projections.identity import SessionView

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

LoginName = Annotated[str, msgspec.Meta(min_length=1, max_length=256, description="the user name")]
Username = Annotated[
    str, msgspec.Meta(min_length=3, max_length=64, description="3 to 64 letters, digits and . _ @ -")
]
Email = Annotated[str, msgspec.Meta(max_length=254, description="name@host")]
FullName = Annotated[str, msgspec.Meta(max_length=200)]
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PASSWORD_LENGTH)]
NewPassword = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=MAX_PASSWORD_LENGTH,
        description="12 to 256 characters mixing two kinds (lower, upper, digits, other), without the user name",
    ),
]
Code = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, description="a 6-digit code from the app, or a backup code")
]
AppCode = Annotated[str, msgspec.Meta(min_length=1, max_length=64, description="a current 6-digit code from the app")]


class SetupRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The first administrator."""

    username: Username
    password: NewPassword
    email: Email | None = None
    full_name: FullName = ""


class LoginRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`totp_code` is needed when the account has two-factor authentication: a code or a backup code."""

    username: LoginName
    password: Password
    totp_code: Code | None = None


class RefreshRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    refresh_token: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


class ChangePasswordRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`revoke_api_keys: true` revokes every API key of the user as well: keys outlive password changes."""

    current_password: Password
    new_password: NewPassword
    revoke_api_keys: bool = False


class StepUpRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Confirms a change a stolen access token must not make: the current password, or (two-factor on)
    a current code of the authenticator app. Each one given must be right."""

    current_password: Password | None = None
    totp_code: AppCode | None = None

    def proof(self) -> StepUp:
        return StepUp(current_password=self.current_password, totp_code=self.totp_code)


def step_up_of(data: StepUpRequest | None) -> StepUp | None:
    return data.proof() if data is not None else None


class CodeRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A code from the authenticator app (or, to disable two-factor, a backup code)."""

    token: Code


class SetupStatus(msgspec.Struct, frozen=True, kw_only=True):
    setup_required: bool


class AccountView(msgspec.Struct, frozen=True, kw_only=True):
    """A user as a write answers with it (GET /api/users adds `created_at` and `updated_at`)."""

    id: UUID
    username: str
    email: str | None
    full_name: str
    role: Role
    permissions: list[Permission]
    is_active: bool
    totp_enabled: bool

    @classmethod
    def of(cls, user: UserSummary) -> AccountView:
        return cls(
            id=user.user_id, username=user.username, email=user.email, full_name=user.full_name, role=user.role,
            permissions=list(user.permissions), is_active=user.active, totp_enabled=user.totp_enabled,
        )  # fmt: skip


class SignedInUser(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    username: str
    email: str | None
    role: Role
    permissions: list[Permission]


class SessionInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The session a sign-in started; it (and its refresh tokens) ends at `expires_at` at the latest."""

    session_id: UUID
    created_at: datetime
    expires_at: datetime


class RefreshAnswer(msgspec.Struct, frozen=True, kw_only=True):
    access_token: str
    refresh_token: str
    token_type: str
    expires_in: int
    user: SignedInUser


class LoginAnswer(RefreshAnswer, frozen=True, kw_only=True):
    """A refresh's answer plus the session the sign-in started."""

    session: SessionInfo


class LogoutAnswer(msgspec.Struct, frozen=True, kw_only=True):
    message: str
    sessions_terminated: int


class SessionsAnswer(msgspec.Struct, frozen=True, kw_only=True):
    sessions: list[SessionView]
    total: int
    max_allowed: int


class SessionEndedAnswer(msgspec.Struct, frozen=True, kw_only=True):
    message: str
    session_id: UUID


class Me(AccountView, frozen=True, kw_only=True):
    """The caller: its user, and how it signed in. `permissions` are this caller's: a key's are cut to its scope."""

    auth: Literal["user", "key"]
    session_id: UUID | None
    key_id: UUID | None
    scope: Scope | None


class JwtConfiguration(msgspec.Struct, frozen=True, kw_only=True):
    algorithm: str
    access_token_expire_minutes: int
    refresh_token_expire_days: int


class SecurityFeatures(msgspec.Struct, frozen=True, kw_only=True):
    token_refresh_enabled: bool
    session_management_available: bool
    audit_logging_enabled: bool
    structured_error_responses: bool
    two_factor_available: bool
    api_keys_available: bool


class SecurityStatus(msgspec.Struct, frozen=True, kw_only=True):
    jwt_configuration: JwtConfiguration
    security_features: SecurityFeatures
    max_sessions_per_user: int


class PasswordChanged(msgspec.Struct, frozen=True, kw_only=True):
    message: str


class TotpStatus(msgspec.Struct, frozen=True, kw_only=True):
    enabled: bool


class TotpSetup(msgspec.Struct, frozen=True, kw_only=True):
    """The only answer that holds the secret and the backup codes: store them now."""

    secret: str
    otpauth_uri: str
    qr_code: str
    backup_codes: list[str]


class TotpChanged(msgspec.Struct, frozen=True, kw_only=True):
    enabled: bool
    message: str


def signed_in_user(user: UserSummary) -> SignedInUser:
    return SignedInUser(
        id=user.user_id, username=user.username, email=user.email, role=user.role, permissions=list(user.permissions)
    )


def session_info(grant: SessionGrant) -> SessionInfo:
    return SessionInfo(
        session_id=grant.session_id, created_at=grant.expires_at - SESSION_LIFETIME, expires_at=grant.expires_at
    )
