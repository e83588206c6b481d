"""The identity use cases: setup, sign-in, sessions, users, two-factor, API keys, per-request checks.

`IdentityHandlers` works over ports only, like `domain.handlers`. Each change
decides with the aggregates and stores every aggregate it touched in one
`save`; a `ConcurrencyConflict` reloads and decides again once, a second one
reaches the caller. The per-request checks (`authenticate_session`,
`authenticate_key`) store no event and never trust a read model: each asks the
event store for the current version of the session or key and of its user (one
indexed query through the `IdentityReader` port), and uses the state of each at
exactly that version, kept in memory from an earlier request or loaded from the
store. A revocation, a logout, a deactivation or a role change is in force for
the next request, whatever the projectors do. Activity is noted in plain tables.

Plain secrets (passwords, TOTP secrets, backup codes, keys) are only ever in
arguments and in the one return value that hands them out; nothing here logs.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar
from uuid import UUID, uuid4

import msgspec
from eventsourcing.domain import Aggregate

from domain.commands import Stored
from domain.errors import (
    AccountDisabled,
    ApiKeyInvalid,
    ApiKeyNotFound,
    ConcurrencyConflict,
    InvalidCredentials,
    InvalidRequest,
    InvalidTotpCode,
    RefreshTokenReused,
    SessionEnded,
    SessionNotFound,
    SetupAlreadyDone,
    SetupRequired,
    StepUpRequired,
    TokenExpired,
    TokenInvalid,
    TotpRequired,
    UserExists,
    UserNotFound,
    WrongPassword,
)
from domain.retry import retrying
from domain.access import Permission, Principal, Role, permissions_for
from domain.identity import ROSTER_ID, ApiKey, EndReason, Roster, Session, User, user_id_for
from domain.identity_requests import (
    AccountState,
    ApiKeyState,
    IssuedKey,
    Login,
    NewKey,
    NewUser,
    SessionGrant,
    SessionState,
    SetupAdmin,
    StepUp,
    TotpEnrollment,
    UserChanges,
    UserSummary,
)
from domain.identity_rules import (
    BACKUP_CODE_COUNT,
    MAX_SESSIONS,
    api_key_text,
    check_email,
    check_password,
    check_username,
    is_totp_code,
    key_prefix,
    normalize_backup_code,
    parse_api_key,
)
from domain.ports import Clock, EventStore, IdentityReader, PasswordHasher, SecretBox, SecretMaker, TotpVerifier
from domain.text import check_text

T = TypeVar("T")
A = TypeVar("A", bound=Aggregate)
S = TypeVar("S")

SYSTEM_ACTOR = "system:auth"
"""The actor of what the system decides by itself (expiry, reuse detection)."""

MAX_NAME_LENGTH = 200
MAX_KEY_NAME_LENGTH = 100
REMEMBERED_STATES = 10_000
"""Sessions, keys and users whose state per-request checks keep in memory (by their stored version)."""


def user_actor(user_id: UUID) -> str:
    return f"user:{user_id}"


class IdentityHandlers:
    """Every identity use case; the HTTP layer, the CLI and tests call these same methods."""

    def __init__(
        self,
        store: EventStore,
        hasher: PasswordHasher,
        box: SecretBox,
        totp: TotpVerifier,
        secrets: SecretMaker,
        clock: Clock,
        reader: IdentityReader,
    ) -> None:
        self.store = store
        self.hasher = hasher
        self.box = box
        self.totp = totp
        self.secrets = secrets
        self.clock = clock
        self.reader = reader
        self._decoy_hash: str | None = None
        self._states = VersionedStates(REMEMBERED_STATES)

    # ---- helpers ----

    async def _retrying(self, decide: Callable[[], Awaitable[tuple[list[Aggregate], T]]]) -> tuple[T, int]:
        """Decide and save under the one conflict-retry policy (`domain.retry`)."""

        async def attempt() -> tuple[T, int]:
            aggregates, result = await decide()
            return result, await self.store.save(*aggregates)

        return await retrying(attempt)

    async def _load(self, aggregate_id: UUID, kind: type[A]) -> A | None:
        """An aggregate by an id that came from outside: an id of another kind of aggregate is no match."""
        try:
            return await self.store.aggregate(aggregate_id, kind)
        except TypeError:
            return None

    async def _user(self, user_id: UUID) -> User:
        """A present user. Raises UserNotFound."""
        user = await self._load(user_id, User)
        if user is None or user.deleted:
            raise UserNotFound(f"no user with id {user_id}")
        return user

    async def _roster(self) -> Roster:
        roster = await self.store.aggregate(ROSTER_ID, Roster)
        if roster is None:
            raise SetupRequired("no administrator exists yet: run first-run setup")
        return roster

    async def _sessions(self, ids: list[UUID]) -> list[Session | None]:
        return list(await asyncio.gather(*(self.store.aggregate(i, Session) for i in ids)))

    async def _end_sessions(
        self, user: User, reason: EndReason, *, actor: str, keep: UUID | None = None
    ) -> list[Session]:
        """End every session of `user` that may still be active, except `keep`; returns those to save."""
        ended = []
        for session in await self._sessions([s for s in user.sessions if s != keep]):
            if session is not None and session.end(reason, actor=actor):
                ended.append(session)
        return ended

    async def _roster_change(self, user: User, was_admin: bool, *, actor: str) -> list[Aggregate]:
        """The roster, changed to match `user`, if its admin standing changed. Raises LastAdmin."""
        if was_admin == user.is_active_admin:
            return []
        roster = await self._roster()
        if user.is_active_admin:
            roster.add_admin(user.id, actor=actor)
        else:
            roster.remove_admin(user.id, actor=actor)
        return [roster]

    def _second_factor(self, user: User, code: str | None, now: datetime, *, actor: str) -> None:
        """Accept a TOTP code (its step once) or spend a backup code. Raises TotpRequired, InvalidTotpCode."""
        if not code or not code.strip():
            raise TotpRequired("enter the code from your authenticator app, or a backup code")
        if is_totp_code(code):
            secret = self.box.open(user.active_totp_secret())
            step = self.totp.matching_step(secret, code.replace(" ", ""), now)
            if step is None:
                raise InvalidTotpCode("wrong code")
            user.accept_totp_step(step, actor=actor)
        else:
            user.use_backup_code(self.secrets.digest(normalize_backup_code(code)), actor=actor)

    async def _step_up(self, user: User, proof: StepUp | None, *, actor: str) -> None:
        """Check the proof that the account's owner asks for a change; a TOTP code's step is spent on `user`.

        Raises StepUpRequired (no proof), InvalidCredentials (a wrong current password), InvalidTotpCode
        (a wrong or used code, a backup code, or a code while two-factor is off).
        """
        if proof is None or not proof.given:
            raise StepUpRequired(
                "confirm this with your current password (`current_password`) or a current code from your "
                "authenticator app (`totp_code`)"
            )
        if proof.current_password and not await self.hasher.verify(user.password_hash, proof.current_password):
            raise InvalidCredentials("the current password is wrong")
        if proof.totp_code:
            if not user.totp_enabled:
                raise InvalidTotpCode("two-factor authentication is off: confirm with your current password")
            if not is_totp_code(proof.totp_code):
                raise InvalidTotpCode("enter the 6-digit code from your authenticator app (backup codes only sign in)")
            secret = self.box.open(user.active_totp_secret())
            step = self.totp.matching_step(secret, proof.totp_code.replace(" ", ""), self.clock.now())
            if step is None:
                raise InvalidTotpCode("wrong code")
            user.accept_totp_step(step, actor=actor)

    async def _decoy(self) -> str:
        if self._decoy_hash is None:
            self._decoy_hash = await self.hasher.hash(self.secrets.key_secret())
        return self._decoy_hash

    # ---- first-run setup ----

    async def setup_required(self) -> bool:
        """Whether no administrator was ever created (first-run setup is open)."""
        return await self.store.aggregate(ROSTER_ID, Roster) is None

    async def setup(self, command: SetupAdmin) -> UserSummary:
        """Create the first administrator, once.

        Raises SetupAlreadyDone (also when another setup won a race), InvalidUsername,
        InvalidText, InvalidEmail, PasswordPolicy.
        """
        if not await self.setup_required():
            raise SetupAlreadyDone("setup was already done")
        username = check_username(command.username)
        email = check_email(command.email)
        full_name = _name(command.full_name)
        check_password(command.password, username=username)
        password_hash = await self.hasher.hash(command.password)
        actor = user_actor(user_id_for(username))
        user = User.register(
            username=username, email=email, full_name=full_name, role=Role.ADMIN, password_hash=password_hash,
            actor=actor,
        )
        roster = Roster(first_admin=user.id, actor=actor)
        try:
            await self.store.save(roster, user)
        except ConcurrencyConflict:
            raise SetupAlreadyDone("setup was already done") from None
        return user.summary()

    # ---- sessions ----

    async def login(self, command: Login) -> SessionGrant:
        """Check the password (and the second factor if enabled) and start a session.

        At most MAX_SESSIONS sessions of a user are active: a sign-in beyond that
        ends the oldest (`evicted`). Raises InvalidCredentials (unknown or deleted
        user, wrong password: the message never says which), AccountDisabled,
        TotpRequired, InvalidTotpCode (wrong, or a TOTP code or backup code used
        before).
        """
        user_id = user_id_for(command.username)
        user = await self._load(user_id, User)
        if user is None or user.deleted:
            await self.hasher.verify(await self._decoy(), command.password)
            raise InvalidCredentials("wrong user name or password")
        verified = user.password_hash
        if not await self.hasher.verify(verified, command.password):
            raise InvalidCredentials("wrong user name or password")
        actor = user_actor(user_id)

        async def decide() -> tuple[list[Aggregate], SessionGrant]:
            nonlocal verified
            user = await self._load(user_id, User)
            if user is None or user.deleted:
                raise InvalidCredentials("wrong user name or password")
            if user.password_hash != verified:
                # The password changed since it was checked: check the new one.
                if not await self.hasher.verify(user.password_hash, command.password):
                    raise InvalidCredentials("wrong user name or password")
                verified = user.password_hash
            if not user.active:
                raise AccountDisabled("this account is deactivated")
            now = self.clock.now()
            if user.totp_enabled:
                self._second_factor(user, command.totp_code, now, actor=actor)
            evicted, released = await self._make_room(user, now, actor=actor)
            session = Session.start(user_id=user_id, ip=command.ip, user_agent=command.user_agent, now=now,
                                    actor=actor)
            user.signed_in(session.id, released=released, actor=actor)
            grant = SessionGrant(
                session_id=session.id, user_id=user_id, generation=session.generation,
                expires_at=session.expires_at, user=user.summary(), position=0,
                evicted=tuple(s.id for s in evicted),
            )
            return [user, session, *evicted], grant

        grant, position = await self._retrying(decide)
        return msgspec.structs.replace(grant, position=position)

    async def _make_room(self, user: User, now: datetime, *, actor: str) -> tuple[list[Session], list[UUID]]:
        """The sessions to end so a new one fits, and the ids the user no longer needs to track."""
        active: list[Session] = []
        released: list[UUID] = []
        for session_id, session in zip(user.sessions, await self._sessions(list(user.sessions)), strict=True):
            if session is None or not session.is_active(now):
                released.append(session_id)
            else:
                active.append(session)
        evicted: list[Session] = []
        while len(active) >= MAX_SESSIONS:
            oldest = active.pop(0)
            oldest.end(EndReason.EVICTED, actor=actor)
            evicted.append(oldest)
            released.append(oldest.id)
        return evicted, released

    async def refresh(self, session_id: UUID, generation: int) -> SessionGrant:
        """Rotate a session's refresh token: `generation` is that of the token presented.

        Raises TokenInvalid (unknown session, a generation never issued),
        SessionEnded, AccountDisabled (the session is ended too), TokenExpired
        (the session is ended as `expired`) and RefreshTokenReused: an older
        generation means the token was copied, so the session is ended
        (`reuse_detected`) and every token of it stops working.
        """

        async def decide() -> tuple[list[Aggregate], SessionGrant]:
            session = await self._load(session_id, Session)
            if session is None:
                raise TokenInvalid("unknown session")
            user = await self.store.aggregate(session.user_id, User)
            if user is None or user.deleted or not user.active:
                if session.end(EndReason.USER_DISABLED, actor=SYSTEM_ACTOR):
                    await self._store_ending(session, EndReason.USER_DISABLED)
                if user is None or user.deleted:
                    raise TokenInvalid("unknown user")
                raise AccountDisabled("this account is deactivated")
            try:
                session.refresh(generation, self.clock.now(), actor=user_actor(session.user_id))
            except (TokenExpired, RefreshTokenReused):
                assert session.end_reason is not None
                await self._store_ending(session, session.end_reason)
                raise
            grant = SessionGrant(
                session_id=session.id, user_id=session.user_id, generation=session.generation,
                expires_at=session.expires_at, user=user.summary(), position=0,
            )
            return [session], grant

        grant, position = await self._retrying(decide)
        return msgspec.structs.replace(grant, position=position)

    async def _store_ending(self, session: Session, reason: EndReason) -> None:
        """Save a session's end even if another writer changed it meanwhile: the end must stand."""
        try:
            await self.store.save(session)
            return
        except ConcurrencyConflict:
            pass
        fresh = await self.store.aggregate(session.id, Session)
        if fresh is not None and fresh.end(reason, actor=SYSTEM_ACTOR):
            await self.store.save(fresh)

    async def logout(self, principal: Principal, *, everywhere: bool = False, step_up: StepUp | None = None) -> int:
        """End the principal's session, or with `everywhere` every session of the user; returns how many ended.

        Ending the other sessions too needs `step_up`. Raises SessionRequired for an API key, and
        with `everywhere` the errors of a missing or wrong step-up (StepUpRequired, InvalidCredentials,
        InvalidTotpCode).
        """
        principal.require_session()
        assert principal.session_id is not None
        current = principal.session_id

        async def decide() -> tuple[list[Aggregate], int]:
            confirmed: list[Aggregate] = []
            ids: list[UUID] = []
            if everywhere:
                user = await self._user(principal.user_id)
                await self._step_up(user, step_up, actor=principal.actor)
                confirmed, ids = [user], list(user.sessions)
            if current not in ids:
                ids.append(current)
            ended: list[Aggregate] = [
                s for s in await self._sessions(ids) if s is not None and s.end(EndReason.LOGOUT, actor=principal.actor)
            ]
            return [*confirmed, *ended], len(ended)

        count, _ = await self._retrying(decide)
        return count

    async def end_session(self, principal: Principal, session_id: UUID, step_up: StepUp | None = None) -> Stored:
        """End one session: one's own, or with USERS_MANAGE anyone's.

        Any session but the caller's own needs `step_up`, and a key needs the `admin` scope.
        Raises SessionRequired (a narrower key), SessionNotFound (also for another user's session
        without USERS_MANAGE), StepUpRequired, InvalidCredentials, InvalidTotpCode. Ending an
        ended session changes nothing.
        """
        principal.require_account_access()

        async def decide() -> tuple[list[Aggregate], None]:
            session = await self._load(session_id, Session)
            if session is None or (
                session.user_id != principal.user_id and not principal.can(Permission.USERS_MANAGE)
            ):
                raise SessionNotFound(f"no session with id {session_id}")
            if session_id == principal.session_id:
                session.end(EndReason.LOGOUT, actor=principal.actor)
                return [session], None
            user = await self._user(principal.user_id)
            await self._step_up(user, step_up, actor=principal.actor)
            session.end(EndReason.REVOKED, actor=principal.actor)
            return [user, session], None

        _, position = await self._retrying(decide)
        return Stored(position=position)

    # ---- users (administrators) ----

    async def create_user(self, principal: Principal, command: NewUser) -> UserSummary:
        """Add a user. Needs USERS_MANAGE.

        Raises InsufficientPermissions, UserExists (names of deleted users stay
        taken), InvalidUsername, InvalidText, InvalidEmail, PasswordPolicy.
        """
        principal.require(Permission.USERS_MANAGE)
        username = check_username(command.username)
        email = check_email(command.email)
        full_name = _name(command.full_name)
        check_password(command.password, username=username)
        password_hash = await self.hasher.hash(command.password)

        async def decide() -> tuple[list[Aggregate], UserSummary]:
            if await self._load(user_id_for(username), User) is not None:
                raise UserExists(f"the user name {username} is taken")
            user = User.register(
                username=username, email=email, full_name=full_name, role=command.role,
                password_hash=password_hash, actor=principal.actor,
            )
            return [user, *await self._roster_change(user, False, actor=principal.actor)], user.summary()

        summary, _ = await self._retrying(decide)
        return summary

    async def update_user(self, principal: Principal, user_id: UUID, changes: UserChanges) -> UserSummary:
        """Change a user's role, profile, password or whether it is active. Needs USERS_MANAGE.

        Deactivating ends the user's sessions (`user_disabled`); a new password ends
        them too (`revoked`). Raises InsufficientPermissions, UserNotFound, LastAdmin
        (the change would leave no active administrator), InvalidText, InvalidEmail, PasswordPolicy, and
        StepUpRequired for the caller's own password (a stolen token must not set it without the old one).
        """
        principal.require(Permission.USERS_MANAGE)
        if isinstance(changes.password, str) and user_id == principal.user_id:
            raise StepUpRequired(
                "change your own password with POST /api/auth/change-password, which asks for the current one"
            )
        email = check_email(changes.email) if not isinstance(changes.email, msgspec.UnsetType) else changes.email
        full_name = _name(changes.full_name) if isinstance(changes.full_name, str) else changes.full_name
        password_hash: str | None = None
        if isinstance(changes.password, str):
            check_password(changes.password, username=(await self._user(user_id)).username)
            password_hash = await self.hasher.hash(changes.password)
        actor = principal.actor

        async def decide() -> tuple[list[Aggregate], UserSummary]:
            user = await self._user(user_id)
            was_admin = user.is_active_admin
            if not (isinstance(email, msgspec.UnsetType) and isinstance(full_name, msgspec.UnsetType)):
                user.change_profile(
                    email=user.email if isinstance(email, msgspec.UnsetType) else email,
                    full_name=user.full_name if isinstance(full_name, msgspec.UnsetType) else full_name,
                    actor=actor,
                )
            if isinstance(changes.role, Role):
                user.change_role(changes.role, actor=actor)
            ended: list[Session] = []
            if changes.active is False and user.active:
                user.deactivate(actor=actor)
                ended = await self._end_sessions(user, EndReason.USER_DISABLED, actor=actor)
            elif changes.active is True:
                user.reactivate(actor=actor)
            if password_hash is not None:
                user.change_password(password_hash, actor=actor)
                ended = ended or await self._end_sessions(user, EndReason.REVOKED, actor=actor)
            roster = await self._roster_change(user, was_admin, actor=actor)
            return [user, *roster, *ended], user.summary()

        summary, _ = await self._retrying(decide)
        return summary

    async def delete_user(self, principal: Principal, user_id: UUID) -> Stored:
        """Delete a user: its sessions end and its keys stop working; its history stays. Needs USERS_MANAGE.

        Raises InsufficientPermissions, UserNotFound, LastAdmin.
        """
        principal.require(Permission.USERS_MANAGE)

        async def decide() -> tuple[list[Aggregate], None]:
            user = await self._user(user_id)
            was_admin = user.is_active_admin
            user.delete(actor=principal.actor)
            ended = await self._end_sessions(user, EndReason.USER_DISABLED, actor=principal.actor)
            roster = await self._roster_change(user, was_admin, actor=principal.actor)
            return [user, *roster, *ended], None

        _, position = await self._retrying(decide)
        return Stored(position=position)

    async def reset_totp(self, principal: Principal, user_id: UUID) -> Stored:
        """An administrator's reset of a user's two-factor authentication (the device is lost). Needs USERS_MANAGE.

        The secret, the backup codes and a set-up not yet verified are gone (`TotpReset`, the
        administrator its actor); the user signs in with the password alone and can set two-factor
        up again. The user's sessions end (`revoked`), but the caller's own: whoever holds one
        may have put the second factor there. Raises InsufficientPermissions, UserNotFound,
        TotpNotEnabled (nothing to reset).
        """
        principal.require(Permission.USERS_MANAGE)

        async def decide() -> tuple[list[Aggregate], None]:
            user = await self._user(user_id)
            user.reset_totp(actor=principal.actor)
            ended = await self._end_sessions(user, EndReason.REVOKED, actor=principal.actor,
                                             keep=principal.session_id)
            return [user, *ended], None

        _, position = await self._retrying(decide)
        return Stored(position=position)

    # ---- one's own account ----

    async def account(self, principal: Principal) -> UserSummary:
        """The principal's own user as stored now (the read models may not have it yet). Raises UserNotFound."""
        return (await self._user(principal.user_id)).summary()

    async def change_password(
        self, principal: Principal, current_password: str, new_password: str, *, revoke_api_keys: bool = False
    ) -> Stored:
        """Change one's own password; every other session of the user ends (`revoked`).

        The user's API keys keep working unless `revoke_api_keys`: then each is revoked, in the
        same save. Raises SessionRequired (API keys cannot), WrongPassword, PasswordPolicy.
        """
        principal.require_session()
        user = await self._user(principal.user_id)
        if not await self.hasher.verify(user.password_hash, current_password):
            raise WrongPassword("the current password is wrong")
        check_password(new_password, username=user.username)
        password_hash = await self.hasher.hash(new_password)

        async def decide() -> tuple[list[Aggregate], None]:
            user = await self._user(principal.user_id)
            user.change_password(password_hash, actor=principal.actor)
            ended = await self._end_sessions(user, EndReason.REVOKED, actor=principal.actor,
                                             keep=principal.session_id)
            revoked = await self._revoke_keys_of(user.id, actor=principal.actor) if revoke_api_keys else []
            return [user, *ended, *revoked], None

        _, position = await self._retrying(decide)
        return Stored(position=position)

    async def totp_setup(self, principal: Principal, step_up: StepUp | None) -> TotpEnrollment:
        """Start two-factor set-up: a new secret and BACKUP_CODE_COUNT backup codes, in force after `totp_verify`.

        Needs `step_up` (the current password: two-factor is off), so a stolen token cannot put
        a second factor of its own on the account. The returned secret, URI and codes are the
        only plain copies. Raises SessionRequired, StepUpRequired, InvalidCredentials,
        InvalidTotpCode, TotpAlreadyEnabled.
        """
        principal.require_session()
        secret = self.totp.new_secret()
        codes = self.secrets.backup_codes(BACKUP_CODE_COUNT)
        sealed = self.box.seal(secret)
        hashes = [self.secrets.digest(normalize_backup_code(c)) for c in codes]

        async def decide() -> tuple[list[Aggregate], str]:
            user = await self._user(principal.user_id)
            await self._step_up(user, step_up, actor=principal.actor)
            user.start_totp_setup(sealed, hashes, actor=principal.actor)
            return [user], user.username

        username, _ = await self._retrying(decide)
        return TotpEnrollment(
            secret=secret, otpauth_uri=self.totp.provisioning_uri(secret, username=username), backup_codes=codes
        )

    async def totp_verify(self, principal: Principal, code: str) -> Stored:
        """Enable two-factor authentication with a code of the pending secret.

        Raises SessionRequired, TotpNotSetUp, TotpAlreadyEnabled, InvalidTotpCode.
        """
        principal.require_session()

        async def decide() -> tuple[list[Aggregate], None]:
            user = await self._user(principal.user_id)
            secret = self.box.open(user.pending_totp_secret())
            if not is_totp_code(code):
                raise InvalidTotpCode("enter the 6-digit code from your authenticator app")
            step = self.totp.matching_step(secret, code.replace(" ", ""), self.clock.now())
            if step is None:
                raise InvalidTotpCode("wrong code")
            user.enable_totp(step, actor=principal.actor)
            return [user], None

        _, position = await self._retrying(decide)
        return Stored(position=position)

    async def totp_disable(self, principal: Principal, code: str) -> Stored:
        """Disable two-factor authentication, given a current TOTP code or an unused backup code.

        Raises SessionRequired, TotpNotEnabled, TotpRequired, InvalidTotpCode.
        """
        principal.require_session()

        async def decide() -> tuple[list[Aggregate], None]:
            user = await self._user(principal.user_id)
            user.active_totp_secret()
            self._second_factor(user, code, self.clock.now(), actor=principal.actor)
            user.disable_totp(actor=principal.actor)
            return [user], None

        _, position = await self._retrying(decide)
        return Stored(position=position)

    # ---- API keys ----

    async def issue_key(self, principal: Principal, command: NewKey, step_up: StepUp | None) -> IssuedKey:
        """Issue an API key of the principal's user; the plain key is in the result only.

        A key acts with its owner's permissions cut down to its scope, as they are at each
        request, and outlives sign-outs and password changes: so issuing one needs `step_up`.
        Raises SessionRequired (keys cannot issue keys), InvalidText, InvalidRequest (empty or
        long name, expiry not in the future), StepUpRequired, InvalidCredentials, InvalidTotpCode.
        """
        principal.require_session()
        name = check_text(command.name, field="name").strip()
        if not name or len(name) > MAX_KEY_NAME_LENGTH:
            raise InvalidRequest(f"a key's name has 1 to {MAX_KEY_NAME_LENGTH} characters")
        expires_at = command.expires_at
        if expires_at is not None and (expires_at.tzinfo is None or expires_at <= self.clock.now()):
            raise InvalidRequest("a key's expiry is a moment in the future, with its time zone")
        key_id = uuid4()
        secret = self.secrets.key_secret()

        async def decide() -> tuple[list[Aggregate], None]:
            user = await self._user(principal.user_id)
            await self._step_up(user, step_up, actor=principal.actor)
            key = ApiKey.issue(
                key_id, user_id=principal.user_id, name=name, scope=command.scope,
                key_hash=self.secrets.digest(secret), expires_at=expires_at, actor=principal.actor,
            )
            return [user, key], None

        _, position = await self._retrying(decide)
        return IssuedKey(
            key_id=key_id, key=api_key_text(key_id, secret), prefix=key_prefix(key_id), name=name,
            scope=command.scope, expires_at=expires_at, position=position,
        )

    async def revoke_key(self, principal: Principal, key_id: UUID) -> Stored:
        """Revoke a key: one's own, or with USERS_MANAGE anyone's. Revoking twice changes nothing.

        Raises SessionRequired (a key narrower than `admin`), ApiKeyNotFound (also for another
        user's key without USERS_MANAGE).
        """
        principal.require_account_access()

        async def decide() -> tuple[list[Aggregate], None]:
            key = await self._load(key_id, ApiKey)
            if key is None or (key.user_id != principal.user_id and not principal.can(Permission.USERS_MANAGE)):
                raise ApiKeyNotFound(f"no API key with id {key_id}")
            key.revoke(actor=principal.actor)
            return [key], None

        _, position = await self._retrying(decide)
        return Stored(position=position)

    async def _revoke_keys_of(self, user_id: UUID, *, actor: str) -> list[ApiKey]:
        """Every key of the user the read model lists, revoked; returns those to save."""
        ids = await self.reader.api_key_ids(user_id)
        keys = await asyncio.gather(*(self._load(i, ApiKey) for i in ids))
        revoked = [k for k in keys if k is not None and k.user_id == user_id and not k.revoked]
        for key in revoked:
            key.revoke(actor=actor)
        return revoked

    # ---- per-request checks (no events) ----

    async def _state(
        self, aggregate_id: UUID, version: int | None, kind: type[A], view: Callable[[A], S], shape: type[S]
    ) -> S | None:
        """The state (`view`) of the aggregate at its stored `version`: remembered, or loaded from the store.

        None when the store has no such aggregate or it is not a `kind`."""
        if version is None:
            return None
        remembered = self._states.get(aggregate_id, version, shape)
        if remembered is not None:
            return remembered
        aggregate = await self._load(aggregate_id, kind)
        if aggregate is None:
            return None
        state = view(aggregate)
        self._states.put(aggregate_id, aggregate.version, state)
        return state

    async def _versions(self, *ids: UUID | None) -> dict[UUID, int]:
        return await self.reader.versions([i for i in ids if i is not None])

    async def _account(self, user_id: UUID, version: int | None) -> AccountState | None:
        return await self._state(user_id, version, User, User.account, AccountState)

    async def authenticate_session(self, session_id: UUID, user_id: UUID) -> Principal:
        """The principal of a verified access token's session and user (the token service checked the token).

        Reads the session and the user as the event store holds them now. Raises TokenInvalid
        (unknown session, another user's, deleted user), SessionEnded, TokenExpired (the
        session's lifetime is over), AccountDisabled.
        """
        versions = await self._versions(session_id, user_id)
        state = await self._state(session_id, versions.get(session_id), Session, Session.state, SessionState)
        if state is None or state.user_id != user_id:
            raise TokenInvalid("unknown session")
        if state.ended:
            raise SessionEnded("the session has ended; sign in again")
        now = self.clock.now()
        if now >= state.expires_at:
            raise TokenExpired("the session has expired; sign in again")
        account = await self._account(user_id, versions.get(user_id))
        if account is None or account.deleted:
            raise TokenInvalid("unknown user")
        if not account.active:
            raise AccountDisabled("this account is deactivated")
        await self.reader.touch_session(session_id, now)
        return Principal(
            kind="user", user_id=user_id, username=account.username, role=account.role,
            permissions=permissions_for(account.role), session_id=session_id,
        )

    async def authenticate_key(self, plain: str) -> Principal:
        """The principal of a plain API key (`X-API-Key`), with its owner's permissions within its scope.

        Reads the key and its owner as the event store holds them now. Raises ApiKeyInvalid
        (malformed, unknown, wrong secret, revoked, expired, owner deleted) and AccountDisabled.
        """
        key_id, secret = parse_api_key(plain)
        # A key's owner never changes: once the key is known, one query gives both versions.
        versions = await self._versions(key_id, self._states.owner(key_id))
        state = await self._state(key_id, versions.get(key_id), ApiKey, ApiKey.state, ApiKeyState)
        if state is None or not hmac.compare_digest(self.secrets.digest(secret), state.key_hash):
            raise ApiKeyInvalid("unknown API key")
        if state.revoked:
            raise ApiKeyInvalid("this API key was revoked")
        now = self.clock.now()
        if state.expires_at is not None and now >= state.expires_at:
            raise ApiKeyInvalid("this API key has expired")
        if state.user_id not in versions:
            versions = await self._versions(state.user_id)
        account = await self._account(state.user_id, versions.get(state.user_id))
        if account is None or account.deleted:
            raise ApiKeyInvalid("the owner of this API key was deleted")
        if not account.active:
            raise AccountDisabled("the owner of this API key is deactivated")
        await self.reader.touch_key(key_id, now)
        return Principal(
            kind="key", user_id=state.user_id, username=account.username, role=account.role,
            permissions=permissions_for(account.role, state.scope), key_id=key_id, scope=state.scope,
        )


class VersionedStates:
    """The states of sessions, keys and users, each remembered with the stored version it belongs to.

    A state is only ever used for the version it was read at, so it never goes stale: a new
    event gives a new version, and the next check loads the aggregate again. At most `size`
    states are kept; the oldest is forgotten first.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._states: dict[UUID, tuple[int, object]] = {}

    def get(self, aggregate_id: UUID, version: int, shape: type[S]) -> S | None:
        found = self._states.get(aggregate_id)
        if found is None or found[0] != version or not isinstance(found[1], shape):
            return None
        return found[1]

    def put(self, aggregate_id: UUID, version: int, state: object) -> None:
        self._states.pop(aggregate_id, None)
        if len(self._states) >= self.size:
            del self._states[next(iter(self._states))]
        self._states[aggregate_id] = (version, state)

    def owner(self, key_id: UUID) -> UUID | None:
        """The user of a key whose state is remembered (whatever its version), else None."""
        found = self._states.get(key_id)
        return found[1].user_id if found is not None and isinstance(found[1], ApiKeyState) else None


def _name(full_name: str) -> str:
    name = check_text(full_name, field="full_name").strip()
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidRequest(f"a full name has at most {MAX_NAME_LENGTH} characters")
    return name
