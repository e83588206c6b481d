"""The API key use cases: issuing a key (with step-up; the plain key is returned once) and revoking one.

A key acts with its owner's permissions cut down to its scope; checking a key on a request is
`domain.authentication`.
"""

from __future__ import annotations

from uuid import UUID, uuid4

from eventsourcing.domain import Aggregate

from domain.access import Permission, Principal
from domain.commands import Stored
from domain.errors import ApiKeyNotFound, InvalidRequest
from domain.identity import ApiKey
from domain.identity_core import IdentityCore
from domain.identity_requests import IssuedKey, NewKey, StepUp
from domain.identity_rules import api_key_text, key_prefix
from domain.text import check_text

MAX_KEY_NAME_LENGTH = 100


class KeyHandlers(IdentityCore):
    """API keys of one's own account (and, with USERS_MANAGE, revoking anyone's)."""

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
