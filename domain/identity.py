"""The identity aggregates: the administrator roster, users, sessions and API keys, and their ids.

Pure: the aggregates record facts as events and check their rules; hashing,
encryption, codes and tokens are done by adapters behind ports. Who may do what is
`domain.access`; the rules of names, passwords and keys are `domain.identity_rules`; what
the use cases take and give back is `domain.identity_requests`; the use cases are
`domain.identity_handlers`.

The four aggregates stay in this one module, longer than most: the event store names each
stored event by its class's module and qualified name (`domain.identity:User.Registered`), so
moving or renaming an aggregate or one of its event classes would leave stored events that no
longer decode.

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
from collections.abc import Iterable, Sequence
from datetime import datetime
from enum import StrEnum
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.access import Role, Scope, permissions_for
from domain.errors import (
    InvalidTotpCode,
    LastAdmin,
    RefreshTokenReused,
    SessionEnded,
    TokenExpired,
    TokenInvalid,
    TotpAlreadyEnabled,
    TotpNotEnabled,
    TotpNotSetUp,
    UserNotFound,
)
from domain.identity_requests import AccountState, ApiKeyState, SessionState, UserSummary
from domain.identity_rules import SESSION_LIFETIME, key_prefix
from domain.text import clean_text

IDENTITY_NAMESPACE = uuid5(NAMESPACE_URL, "https://wattledger.invalid/identity")
ROSTER_ID = uuid5(IDENTITY_NAMESPACE, "roster")


class EndReason(StrEnum):
    LOGOUT = "logout"
    EVICTED = "evicted"
    REVOKED = "revoked"
    REUSE_DETECTED = "reuse_detected"
    USER_DISABLED = "user_disabled"
    EXPIRED = "expired"


def user_id_for(username: str) -> UUID:
    """A user's id: user names that differ only in case are one user."""
    return uuid5(IDENTITY_NAMESPACE, f"user:{username.casefold()}")


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
