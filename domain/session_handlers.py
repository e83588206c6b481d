"""The session use cases: first-run setup, sign-in, refresh with reuse detection, sign-out, ending a session.

A sign-in beyond MAX_SESSIONS ends the user's oldest session; a refresh token of an older
generation ends its session (`reuse_detected`). The end of a session the system decides
(expiry, reuse, a deactivated user) is stored even when another writer changed it meanwhile.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import msgspec
from eventsourcing.domain import Aggregate

from domain.access import Permission, Principal, Role
from domain.commands import Stored
from domain.errors import (
    AccountDisabled,
    ConcurrencyConflict,
    InvalidCredentials,
    RefreshTokenReused,
    SessionNotFound,
    SetupAlreadyDone,
    TokenExpired,
    TokenInvalid,
)
from domain.identity import ROSTER_ID, EndReason, Roster, Session, User, user_id_for
from domain.identity_core import SYSTEM_ACTOR, IdentityCore, user_actor
from domain.identity_requests import Login, SessionGrant, SetupAdmin, StepUp, UserSummary
from domain.identity_rules import MAX_SESSIONS, check_email, check_full_name, check_password, check_username


class SessionHandlers(IdentityCore):
    """Setup, sign-in, refresh, sign-out and ending sessions."""

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
        full_name = check_full_name(command.full_name)
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
