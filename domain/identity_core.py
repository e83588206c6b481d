"""What every identity use case stands on: the ports, loading and saving, and the checks several share.

`IdentityCore` holds the ports; each group of use cases (`domain.session_handlers`,
`domain.user_handlers`, `domain.totp_handlers`, `domain.key_handlers`, `domain.authentication`)
is a subclass of it, and `domain.identity_handlers.IdentityHandlers` is all of them. A change
decides with the aggregates and stores every aggregate it touched in one `save` under the
conflict-retry policy (`domain.retry`). Shared here: loading a user, the roster and sessions,
ending a user's sessions, keeping the roster in step, the second factor at sign-in, the step-up
proof, and revoking a user's keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate

from domain.errors import (
    InvalidCredentials,
    InvalidTotpCode,
    SetupRequired,
    StepUpRequired,
    TotpRequired,
    UserNotFound,
)
from domain.identity import ROSTER_ID, ApiKey, EndReason, Roster, Session, User
from domain.identity_requests import StepUp
from domain.identity_rules import is_totp_code, normalize_backup_code
from domain.ports import Clock, EventStore, IdentityReader, PasswordHasher, SecretBox, SecretMaker, TotpVerifier
from domain.retry import retrying

T = TypeVar("T")
A = TypeVar("A", bound=Aggregate)

SYSTEM_ACTOR = "system:auth"
"""The actor of what the system decides by itself (expiry, reuse detection)."""


def user_actor(user_id: UUID) -> str:
    return f"user:{user_id}"


class IdentityCore:
    """The ports of the identity use cases and the helpers more than one group of them needs."""

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

    async def _revoke_keys_of(self, user_id: UUID, *, actor: str) -> list[ApiKey]:
        """Every key of the user the read model lists, revoked; returns those to save."""
        ids = await self.reader.api_key_ids(user_id)
        keys = await asyncio.gather(*(self._load(i, ApiKey) for i in ids))
        revoked = [k for k in keys if k is not None and k.user_id == user_id and not k.revoked]
        for key in revoked:
            key.revoke(actor=actor)
        return revoked
