"""Identity and access: users, the administrator roster, sessions, API keys, roles and permissions.

Pure: the aggregates record facts as events and check their rules; hashing,
encryption, codes and tokens are done by adapters behind ports.

- `Roster` is a singleton listing the active administrators. First-run setup
  creates it together with the first user, and every change that adds or
  removes an active administrator is saved together with it, so a second
  setup, or two demotions racing each other, collide in the store.
- `User` has id `uuid5(namespace, username.casefold())`, so a duplicate name
  collides too. It keeps the sessions that may still be active (in sign-in
  order), which is how a fourth sign-in ends the oldest session even when
  sign-ins race.
- `Session` holds only its current refresh generation: no refresh token, nor
  its hash, is stored. A token of an older generation is reuse.
- `ApiKey` holds the SHA-256 of its secret; the plain key is shown once.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec
from eventsourcing.domain import Aggregate, event

from domain.errors import (
    ApiKeyInvalid,
    InsufficientPermissions,
    InvalidEmail,
    InvalidTotpCode,
    InvalidUsername,
    LastAdmin,
    PasswordPolicy,
    RefreshTokenReused,
    SessionEnded,
    SessionRequired,
    TokenExpired,
    TokenInvalid,
    TotpAlreadyEnabled,
    TotpNotEnabled,
    TotpNotSetUp,
    UserNotFound,
)
from domain.text import check_text, clean_text

IDENTITY_NAMESPACE = uuid5(NAMESPACE_URL, "https://wattledger.invalid/identity")
ROSTER_ID = uuid5(IDENTITY_NAMESPACE, "roster")

MAX_SESSIONS = 3
"""Active sessions per user; a sign-in beyond this ends the oldest."""

SESSION_LIFETIME = timedelta(days=7)
"""A session, and with it every refresh token it issues, ends this long after sign-in."""

ACCESS_TOKEN_LIFETIME = timedelta(minutes=30)

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 256
BACKUP_CODE_COUNT = 10
API_KEY_PREFIX = "wl"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_USERNAME = re.compile(r"[^\W_][\w.@-]{2,63}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"


class Scope(StrEnum):
    """What an API key may do, within its owner's permissions."""

    READ = "read"
    READ_WRITE = "read-write"
    ADMIN = "admin"


class Permission(StrEnum):
    DEVICES_VIEW = "DEVICES_VIEW"
    DEVICES_CONTROL = "DEVICES_CONTROL"
    DEVICES_MANAGE = "DEVICES_MANAGE"
    RATES_EDIT = "RATES_EDIT"
    USERS_MANAGE = "USERS_MANAGE"
    DATA_EXPORT = "DATA_EXPORT"
    SYSTEM_CONFIG = "SYSTEM_CONFIG"
    BACKUPS_MANAGE = "BACKUPS_MANAGE"
    AUDIT_VIEW = "AUDIT_VIEW"


class EndReason(StrEnum):
    LOGOUT = "logout"
    EVICTED = "evicted"
    REVOKED = "revoked"
    REUSE_DETECTED = "reuse_detected"
    USER_DISABLED = "user_disabled"
    EXPIRED = "expired"


ALL_PERMISSIONS = frozenset(Permission)

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: ALL_PERMISSIONS,
    Role.OPERATOR: frozenset(
        {
            Permission.DEVICES_VIEW,
            Permission.DEVICES_CONTROL,
            Permission.DEVICES_MANAGE,
            Permission.RATES_EDIT,
            Permission.DATA_EXPORT,
        }
    ),
    Role.VIEWER: frozenset({Permission.DEVICES_VIEW}),
}

SCOPE_PERMISSIONS: dict[Scope, frozenset[Permission]] = {
    Scope.READ: frozenset({Permission.DEVICES_VIEW}),
    Scope.READ_WRITE: frozenset({Permission.DEVICES_VIEW, Permission.DEVICES_CONTROL, Permission.DEVICES_MANAGE}),
    Scope.ADMIN: ALL_PERMISSIONS,
}


def permissions_for(role: Role, scope: Scope | None = None) -> frozenset[Permission]:
    """A role's permissions; with a key's `scope`, only those of them the scope allows."""
    granted = ROLE_PERMISSIONS[role]
    return granted if scope is None else granted & SCOPE_PERMISSIONS[scope]


def user_id_for(username: str) -> UUID:
    """A user's id: user names that differ only in case are one user."""
    return uuid5(IDENTITY_NAMESPACE, f"user:{username.casefold()}")


def check_username(username: str) -> str:
    """3 to 64 letters, digits and `. _ @ -`, starting with a letter or digit. Raises InvalidUsername."""
    if not _USERNAME.fullmatch(username):
        raise InvalidUsername(
            "a user name has 3 to 64 characters: letters, digits and . _ @ -, starting with a letter or digit"
        )
    return username


def check_email(email: str | None) -> str | None:
    """None, or something shaped like `name@host` of at most 254 characters. Raises InvalidText, InvalidEmail."""
    if email is None:
        return None
    email = check_text(email, field="email").strip()
    if len(email) > 254 or not _EMAIL.fullmatch(email):
        raise InvalidEmail("an e-mail address looks like name@host")
    return email


def check_password(password: str, *, username: str) -> None:
    """The password policy. Raises PasswordPolicy naming the first rule broken.

    A password has 12 to 256 characters, mixes at least two kinds of character
    (lower-case letters, upper-case letters, digits, anything else such as
    spaces or punctuation), and does not contain the user name.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PasswordPolicy(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise PasswordPolicy(f"a password has at most {MAX_PASSWORD_LENGTH} characters")
    kinds = {
        "lower" if c.islower() else "upper" if c.isupper() else "digit" if c.isdigit() else "other"
        for c in password
    }
    if len(kinds) < 2:
        raise PasswordPolicy(
            "a password mixes at least two of: lower-case letters, upper-case letters, digits, other characters"
        )
    if username.casefold() in password.casefold():
        raise PasswordPolicy("a password must not contain the user name")


def is_totp_code(code: str) -> bool:
    """Six digits (spaces allowed) are a TOTP code; anything else is tried as a backup code."""
    digits = code.replace(" ", "")
    return len(digits) == 6 and digits.isascii() and digits.isdigit()


def normalize_backup_code(code: str) -> str:
    """Backup codes are compared without case, spaces or dashes."""
    return "".join(c for c in code.upper() if c not in " -")


def api_key_text(key_id: UUID, secret: str) -> str:
    """The plain key a client sends in `X-API-Key`: `wl_<key id hex>_<secret>`."""
    return f"{API_KEY_PREFIX}_{key_id.hex}_{secret}"


def key_prefix(key_id: UUID) -> str:
    """The start of a key, shown in lists so a person can tell keys apart; not a secret."""
    return f"{API_KEY_PREFIX}_{key_id.hex[:8]}"


def parse_api_key(plain: str) -> tuple[UUID, str]:
    """(key id, secret) of a plain key. Raises ApiKeyInvalid for anything not shaped like one."""
    parts = plain.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != API_KEY_PREFIX or len(parts[1]) != 32 or not parts[2]:
        raise ApiKeyInvalid("not an API key")
    try:
        key_id = UUID(hex=parts[1])
    except ValueError:
        raise ApiKeyInvalid("not an API key") from None
    return key_id, parts[2]


# ---- what the use cases return (no secret fields) and what the read port answers ----


class UserSummary(msgspec.Struct, frozen=True, kw_only=True):
    user_id: UUID
    username: str
    email: str | None
    full_name: str
    role: Role
    permissions: list[Permission]
    active: bool
    totp_enabled: bool


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who makes a request: a signed-in user (`kind="user"`, with its session) or an API key."""

    kind: Literal["user", "key"]
    user_id: UUID
    username: str
    role: Role
    permissions: frozenset[Permission]
    session_id: UUID | None = None
    key_id: UUID | None = None
    scope: Scope | None = None

    @property
    def actor(self) -> str:
        """The `actor` recorded on the events this principal causes: `user:<id>` or `key:<id>`."""
        return f"key:{self.key_id}" if self.kind == "key" else f"user:{self.user_id}"

    @property
    def read_only(self) -> bool:
        """A `read` key: safe methods only."""
        return self.scope is Scope.READ

    def can(self, permission: Permission) -> bool:
        return permission in self.permissions

    def require(self, *permissions: Permission) -> None:
        """Raises InsufficientPermissions naming the first permission missing."""
        for permission in permissions:
            if permission not in self.permissions:
                raise InsufficientPermissions(
                    f"this needs the {permission.value} permission", required=permission.value
                )

    def check_method(self, method: str) -> None:
        """A read-only key may only read; raises InsufficientPermissions for any other method."""
        if self.read_only and method.upper() not in SAFE_METHODS:
            raise InsufficientPermissions("a read-only API key can only read")

    def require_session(self) -> None:
        """Raises SessionRequired unless this is a signed-in user."""
        if self.kind != "user" or self.session_id is None:
            raise SessionRequired("sign in to do this: API keys cannot")

    def require_account_access(self) -> None:
        """Raises SessionRequired unless this is a signed-in user or an `admin`-scope key: the account's
        sessions and keys are not managed with a narrower key."""
        if self.kind == "key" and self.scope is not Scope.ADMIN:
            raise SessionRequired("sign in, or use an admin-scope API key, to manage sessions and API keys")


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


# ---- aggregates ----


class Roster(Aggregate):
    """The ids of the active administrators: active users with the admin role. One per system."""

    class Founded(Aggregate.Created):
        first_admin: UUID
        actor: str

    class AdminAdded(Aggregate.Event):
        user_id: UUID
        actor: str

    class AdminRemoved(Aggregate.Event):
        user_id: UUID
        actor: str

    @staticmethod
    def create_id(**_: object) -> UUID:
        return ROSTER_ID

    @event(Founded)
    def __init__(self, *, first_admin: UUID, actor: str) -> None:
        self.admins: set[UUID] = {first_admin}

    def add_admin(self, user_id: UUID, *, actor: str) -> None:
        if user_id not in self.admins:
            self._admin_added(user_id=user_id, actor=actor)

    @event(AdminAdded)
    def _admin_added(self, user_id: UUID, actor: str) -> None:
        self.admins.add(user_id)

    def remove_admin(self, user_id: UUID, *, actor: str) -> None:
        """Raises LastAdmin when `user_id` is the only active administrator."""
        if user_id not in self.admins:
            return
        if self.admins == {user_id}:
            raise LastAdmin("the last active administrator cannot be demoted, deactivated or deleted")
        self._admin_removed(user_id=user_id, actor=actor)

    @event(AdminRemoved)
    def _admin_removed(self, user_id: UUID, actor: str) -> None:
        self.admins.discard(user_id)


class User(Aggregate):
    """An account. `sessions` are the sessions that may still be active, oldest first."""

    class Registered(Aggregate.Created):
        username: str
        email: str | None
        full_name: str
        role: str
        password_hash: str
        actor: str

    class ProfileChanged(Aggregate.Event):
        email: str | None
        full_name: str
        actor: str

    class RoleChanged(Aggregate.Event):
        role: str
        actor: str

    class Deactivated(Aggregate.Event):
        actor: str

    class Reactivated(Aggregate.Event):
        actor: str

    class Deleted(Aggregate.Event):
        actor: str

    class PasswordChanged(Aggregate.Event):
        password_hash: str
        actor: str

    class TotpSetupStarted(Aggregate.Event):
        secret_sealed: str
        backup_code_hashes: list[str]
        actor: str

    class TotpEnabled(Aggregate.Event):
        actor: str

    class TotpDisabled(Aggregate.Event):
        actor: str

    class TotpReset(Aggregate.Event):
        """An administrator removed the user's two-factor set-up (the user lost the device, or never set it)."""

        actor: str

    class TotpCodeAccepted(Aggregate.Event):
        step: int
        actor: str

    class BackupCodeUsed(Aggregate.Event):
        index: int
        actor: str

    class SignedIn(Aggregate.Event):
        """A session started; `released` are earlier sessions no longer tracked (ended, expired, evicted)."""

        session_id: UUID
        released: list[UUID]
        actor: str

    @staticmethod
    def create_id(username: str, **_: object) -> UUID:
        return user_id_for(username)

    @event(Registered)
    def __init__(
        self, *, username: str, email: str | None, full_name: str, role: str, password_hash: str, actor: str
    ) -> None:
        self.username = username
        self.email = email
        self.full_name = full_name
        self.role = Role(role)
        self.password_hash = password_hash
        self.active = True
        self.deleted = False
        self.totp_enabled = False
        self.totp_secret_sealed: str | None = None
        self.totp_pending: tuple[str, tuple[str, ...]] | None = None
        self.backup_code_hashes: tuple[str, ...] = ()
        self.backup_codes_used: set[int] = set()
        self.last_totp_step = -1
        self.sessions: list[UUID] = []

    @classmethod
    def register(
        cls, *, username: str, email: str | None, full_name: str, role: Role, password_hash: str, actor: str
    ) -> User:
        return cls(
            username=username, email=email, full_name=full_name, role=role.value, password_hash=password_hash,
            actor=actor,
        )

    @property
    def is_active_admin(self) -> bool:
        """Whether the user counts in the roster."""
        return self.role is Role.ADMIN and self.active and not self.deleted

    @property
    def backup_codes_left(self) -> int:
        return len(self.backup_code_hashes) - len(self.backup_codes_used)

    def check_present(self) -> None:
        if self.deleted:
            raise UserNotFound(f"no user with id {self.id}")

    def summary(self) -> UserSummary:
        return UserSummary(
            user_id=self.id, username=self.username, email=self.email, full_name=self.full_name, role=self.role,
            permissions=sorted(permissions_for(self.role)), active=self.active, totp_enabled=self.totp_enabled,
        )

    def account(self) -> AccountState:
        return AccountState(
            user_id=self.id, username=self.username, role=self.role, active=self.active, deleted=self.deleted
        )

    def change_profile(self, *, email: str | None, full_name: str, actor: str) -> None:
        self.check_present()
        if (email, full_name) != (self.email, self.full_name):
            self._profile_changed(email=email, full_name=full_name, actor=actor)

    @event(ProfileChanged)
    def _profile_changed(self, email: str | None, full_name: str, actor: str) -> None:
        self.email, self.full_name = email, full_name

    def change_role(self, role: Role, *, actor: str) -> None:
        self.check_present()
        if role is not self.role:
            self._role_changed(role=role.value, actor=actor)

    @event(RoleChanged)
    def _role_changed(self, role: str, actor: str) -> None:
        self.role = Role(role)

    def deactivate(self, *, actor: str) -> None:
        self.check_present()
        if self.active:
            self._deactivated(actor=actor)

    @event(Deactivated)
    def _deactivated(self, actor: str) -> None:
        self.active = False

    def reactivate(self, *, actor: str) -> None:
        self.check_present()
        if not self.active:
            self._reactivated(actor=actor)

    @event(Reactivated)
    def _reactivated(self, actor: str) -> None:
        self.active = True

    def delete(self, *, actor: str) -> None:
        self.check_present()
        self._deleted(actor=actor)

    @event(Deleted)
    def _deleted(self, actor: str) -> None:
        self.deleted = True
        self.active = False

    def change_password(self, password_hash: str, *, actor: str) -> None:
        self.check_present()
        self._password_changed(password_hash=password_hash, actor=actor)

    @event(PasswordChanged)
    def _password_changed(self, password_hash: str, actor: str) -> None:
        self.password_hash = password_hash

    def start_totp_setup(self, secret_sealed: str, backup_code_hashes: Sequence[str], *, actor: str) -> None:
        """A new secret and backup codes, in force once a code of the secret is verified."""
        self.check_present()
        if self.totp_enabled:
            raise TotpAlreadyEnabled("two-factor authentication is already enabled; disable it first")
        self._totp_setup_started(secret_sealed=secret_sealed, backup_code_hashes=list(backup_code_hashes), actor=actor)

    @event(TotpSetupStarted)
    def _totp_setup_started(self, secret_sealed: str, backup_code_hashes: list[str], actor: str) -> None:
        self.totp_pending = (secret_sealed, tuple(backup_code_hashes))

    def pending_totp_secret(self) -> str:
        """The sealed secret of a started set-up. Raises TotpAlreadyEnabled or TotpNotSetUp."""
        if self.totp_enabled:
            raise TotpAlreadyEnabled("two-factor authentication is already enabled")
        if self.totp_pending is None:
            raise TotpNotSetUp("start two-factor set-up first")
        return self.totp_pending[0]

    def active_totp_secret(self) -> str:
        """The sealed secret in force. Raises TotpNotEnabled."""
        if not self.totp_enabled or self.totp_secret_sealed is None:
            raise TotpNotEnabled("two-factor authentication is not enabled")
        return self.totp_secret_sealed

    def accept_totp_step(self, step: int, *, actor: str) -> None:
        """A TOTP code is good once: its time step must be newer than the last one accepted."""
        if step <= self.last_totp_step:
            raise InvalidTotpCode("this code was already used; wait for the next one")
        self._totp_code_accepted(step=step, actor=actor)

    @event(TotpCodeAccepted)
    def _totp_code_accepted(self, step: int, actor: str) -> None:
        self.last_totp_step = step

    def enable_totp(self, step: int, *, actor: str) -> None:
        """Put the pending set-up in force, given the time step of a code it matched."""
        self.pending_totp_secret()
        self.accept_totp_step(step, actor=actor)
        self._totp_enabled(actor=actor)

    @event(TotpEnabled)
    def _totp_enabled(self, actor: str) -> None:
        assert self.totp_pending is not None
        self.totp_secret_sealed, self.backup_code_hashes = self.totp_pending
        self.totp_pending = None
        self.backup_codes_used = set()
        self.totp_enabled = True

    def use_backup_code(self, code_hash: str, *, actor: str) -> None:
        """Spend the unused backup code with this hash. Raises InvalidTotpCode."""
        for index, stored in enumerate(self.backup_code_hashes):
            if index not in self.backup_codes_used and hmac.compare_digest(stored, code_hash):
                self._backup_code_used(index=index, actor=actor)
                return
        raise InvalidTotpCode("wrong or already used code")

    @event(BackupCodeUsed)
    def _backup_code_used(self, index: int, actor: str) -> None:
        self.backup_codes_used.add(index)

    def disable_totp(self, *, actor: str) -> None:
        self.active_totp_secret()
        self._totp_disabled(actor=actor)

    @event(TotpDisabled)
    def _totp_disabled(self, actor: str) -> None:
        self.totp_enabled = False
        self.totp_secret_sealed = None
        self.totp_pending = None
        self.backup_code_hashes = ()
        self.backup_codes_used = set()

    def reset_totp(self, *, actor: str) -> None:
        """Remove two-factor authentication, or a set-up not yet verified, without a code. Raises TotpNotEnabled."""
        self.check_present()
        if not self.totp_enabled and self.totp_pending is None:
            raise TotpNotEnabled("two-factor authentication is not enabled nor being set up")
        self._totp_reset(actor=actor)

    @event(TotpReset)
    def _totp_reset(self, actor: str) -> None:
        self.totp_enabled = False
        self.totp_secret_sealed = None
        self.totp_pending = None
        self.backup_code_hashes = ()
        self.backup_codes_used = set()

    def signed_in(self, session_id: UUID, *, released: Iterable[UUID], actor: str) -> None:
        self._signed_in(session_id=session_id, released=list(released), actor=actor)

    @event(SignedIn)
    def _signed_in(self, session_id: UUID, released: list[UUID], actor: str) -> None:
        gone = set(released)
        self.sessions = [s for s in self.sessions if s not in gone] + [session_id]


class Session(Aggregate):
    """One sign-in of a user, refreshed by generation until it ends or expires."""

    class Started(Aggregate.Created):
        user_id: UUID
        ip: str
        user_agent: str
        expires_at: datetime
        actor: str

    class Refreshed(Aggregate.Event):
        generation: int
        actor: str

    class Ended(Aggregate.Event):
        reason: str
        actor: str

    @event(Started)
    def __init__(self, *, user_id: UUID, ip: str, user_agent: str, expires_at: datetime, actor: str) -> None:
        self.user_id = user_id
        self.ip = ip
        self.user_agent = user_agent
        self.expires_at = expires_at
        self.generation = 1
        self.end_reason: EndReason | None = None

    @classmethod
    def start(cls, *, user_id: UUID, ip: str, user_agent: str, now: datetime, actor: str) -> Session:
        """A new session; the client's address and user agent are kept without characters text may not hold."""
        return cls(user_id=user_id, ip=clean_text(ip)[:64], user_agent=clean_text(user_agent)[:512],
                   expires_at=now + SESSION_LIFETIME, actor=actor)

    @property
    def ended(self) -> bool:
        return self.end_reason is not None

    def is_active(self, now: datetime) -> bool:
        return not self.ended and now < self.expires_at

    def state(self) -> SessionState:
        return SessionState(
            session_id=self.id, user_id=self.user_id, expires_at=self.expires_at, ended=self.ended
        )

    def end(self, reason: EndReason, *, actor: str) -> bool:
        """End the session; returns False (and records nothing) if it had ended already."""
        if self.ended:
            return False
        self._ended(reason=reason.value, actor=actor)
        return True

    @event(Ended)
    def _ended(self, reason: str, actor: str) -> None:
        self.end_reason = EndReason(reason)

    def refresh(self, presented: int, now: datetime, *, actor: str) -> None:
        """Move to the next generation, given the generation of the refresh token presented.

        Raises SessionEnded if it has ended, TokenInvalid for a generation it never
        issued. An expired session ends (`expired`) and raises TokenExpired; an
        older generation is reuse: the session ends (`reuse_detected`) and
        RefreshTokenReused is raised. In those two cases the caller saves the
        session before passing the error on.
        """
        if self.end_reason is not None:
            raise SessionEnded(f"the session has ended ({self.end_reason.value})")
        if now >= self.expires_at:
            self._ended(reason=EndReason.EXPIRED.value, actor=actor)
            raise TokenExpired("the session has expired; sign in again")
        if presented < self.generation:
            self._ended(reason=EndReason.REUSE_DETECTED.value, actor=actor)
            raise RefreshTokenReused("this refresh token was already used: the session is ended; sign in again")
        if presented > self.generation:
            raise TokenInvalid("unknown refresh token")
        self._refreshed(generation=self.generation + 1, actor=actor)

    @event(Refreshed)
    def _refreshed(self, generation: int, actor: str) -> None:
        self.generation = generation


class ApiKey(Aggregate):
    """A key of one user with a scope. Its id is part of the plain key, so it is chosen before creation."""

    class Issued(Aggregate.Created):
        user_id: UUID
        name: str
        scope: str
        key_hash: str
        prefix: str
        expires_at: datetime | None
        actor: str

    class Revoked(Aggregate.Event):
        actor: str

    def __init__(
        self, *, user_id: UUID, name: str, scope: str, key_hash: str, prefix: str, expires_at: datetime | None,
        actor: str,
    ) -> None:
        self.user_id = user_id
        self.name = name
        self.scope = Scope(scope)
        self.key_hash = key_hash
        self.prefix = prefix
        self.expires_at = expires_at
        self.revoked = False

    @classmethod
    def issue(
        cls, key_id: UUID, *, user_id: UUID, name: str, scope: Scope, key_hash: str, expires_at: datetime | None,
        actor: str,
    ) -> ApiKey:
        return cls._create(
            cls.Issued, id=key_id, user_id=user_id, name=name, scope=scope.value, key_hash=key_hash,
            prefix=key_prefix(key_id), expires_at=expires_at, actor=actor,
        )

    def state(self) -> ApiKeyState:
        return ApiKeyState(
            key_id=self.id, user_id=self.user_id, scope=self.scope, key_hash=self.key_hash,
            expires_at=self.expires_at, revoked=self.revoked,
        )

    def revoke(self, *, actor: str) -> None:
        if not self.revoked:
            self._revoked(actor=actor)

    @event(Revoked)
    def _revoked(self, actor: str) -> None:
        self.revoked = True
