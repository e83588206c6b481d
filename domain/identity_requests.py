"""What the identity use cases take and give back, as msgspec Structs.

Requests (`SetupAdmin`, `Login`, `NewUser`, `UserChanges`, `NewKey`, `StepUp`) refuse unknown
fields. Results (`UserSummary`, `SessionGrant`, `TotpEnrollment`, `IssuedKey`) carry no secret
but the one a result hands out once. The states (`SessionState`, `AccountState`, `ApiKeyState`)
are what per-request authentication keeps of a session, a user and a key.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import msgspec

from domain.access import Permission, Role, Scope


# ---- what the use cases return (no secret fields) and what per-request checks keep ----


class UserSummary(msgspec.Struct, frozen=True, kw_only=True):
    user_id: UUID
    username: str
    email: str | None
    full_name: str
    role: Role
    permissions: list[Permission]
    active: bool
    totp_enabled: bool



class SessionGrant(msgspec.Struct, frozen=True, kw_only=True):
    """A started or refreshed session: what the token service signs into an access and a refresh token."""

    session_id: UUID
    user_id: UUID
    generation: int
    expires_at: datetime
    user: UserSummary
    position: int
    evicted: tuple[UUID, ...] = ()
    """Sessions a sign-in ended to make room (their tokens stop once the read model has the end)."""


class TotpEnrollment(msgspec.Struct, frozen=True, kw_only=True):
    """A started two-factor set-up: the only place the secret and the backup codes appear in plain."""

    secret: str
    otpauth_uri: str
    backup_codes: list[str]


class IssuedKey(msgspec.Struct, frozen=True, kw_only=True):
    """A new API key; `key` is the plain key, shown this once and stored nowhere."""

    key_id: UUID
    key: str
    prefix: str
    name: str
    scope: Scope
    expires_at: datetime | None
    position: int


class SessionState(msgspec.Struct, frozen=True, kw_only=True):
    session_id: UUID
    user_id: UUID
    expires_at: datetime
    ended: bool


class AccountState(msgspec.Struct, frozen=True, kw_only=True):
    user_id: UUID
    username: str
    role: Role
    active: bool
    deleted: bool


class ApiKeyState(msgspec.Struct, frozen=True, kw_only=True):
    key_id: UUID
    user_id: UUID
    scope: Scope
    key_hash: str
    expires_at: datetime | None
    revoked: bool


# ---- commands (request-like: unknown fields are refused) ----


class SetupAdmin(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """First-run setup: the first administrator."""

    username: str
    password: str
    email: str | None = None
    full_name: str = ""


class Login(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A sign-in; `totp_code` is a 6-digit TOTP code or a backup code."""

    username: str
    password: str
    totp_code: str | None = None
    ip: str = ""
    user_agent: str = ""


class NewUser(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    username: str
    password: str
    role: Role = Role.VIEWER
    email: str | None = None
    full_name: str = ""


class UserChanges(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An administrator's change of a user; fields left UNSET stay as they are."""

    role: Role | msgspec.UnsetType = msgspec.UNSET
    email: str | None | msgspec.UnsetType = msgspec.UNSET
    full_name: str | msgspec.UnsetType = msgspec.UNSET
    password: str | msgspec.UnsetType = msgspec.UNSET
    active: bool | msgspec.UnsetType = msgspec.UNSET


class NewKey(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    scope: Scope = Scope.READ
    expires_at: datetime | None = None


class StepUp(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Proof, sent with a change that could take an account over, that its owner asks for it.

    A stolen access token alone does not carry it: the current password, or a current
    code of the authenticator app (two-factor on). Each one given must be right.
    """

    current_password: str | None = None
    totp_code: str | None = None

    @property
    def given(self) -> bool:
        return bool(self.current_password or self.totp_code)

