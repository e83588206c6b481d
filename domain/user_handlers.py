"""The user use cases: an administrator's adding, changing and deleting of users and resetting
their two-factor set-up, and one's own account and password.

Every change that adds or removes an active administrator is saved with the roster, so the
last one cannot be demoted, deactivated or deleted (LastAdmin). A deactivation or a new password
ends the user's sessions.
"""

from __future__ import annotations

from uuid import UUID

import msgspec
from eventsourcing.domain import Aggregate

from domain.access import Permission, Principal, Role
from domain.commands import Stored
from domain.errors import StepUpRequired, UserExists, WrongPassword
from domain.identity import EndReason, Session, User, user_id_for
from domain.identity_core import IdentityCore
from domain.identity_requests import NewUser, UserChanges, UserSummary
from domain.identity_rules import check_email, check_full_name, check_password, check_username


class UserHandlers(IdentityCore):
    """Users, managed by administrators (USERS_MANAGE), and one's own account."""

    # ---- users (administrators) ----

    async def create_user(self, principal: Principal, command: NewUser) -> UserSummary:
        """Add a user. Needs USERS_MANAGE.

        Raises InsufficientPermissions, UserExists (names of deleted users stay
        taken), InvalidUsername, InvalidText, InvalidEmail, PasswordPolicy.
        """
        principal.require(Permission.USERS_MANAGE)
        username = check_username(command.username)
        email = check_email(command.email)
        full_name = check_full_name(command.full_name)
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
        full_name = check_full_name(changes.full_name) if isinstance(changes.full_name, str) else changes.full_name
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
