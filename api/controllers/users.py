"""Users: list, create, change and delete accounts, reset their two-factor (administrators, USERS_MANAGE)."""

from __future__ import annotations

from uuid import UUID

import msgspec
from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from api.controllers.auth_schemas import AccountView, Email, FullName, NewPassword, Username
from api.deps import IdentityDeps
from domain.access import Permission, Principal, Role
from domain.identity_requests import NewUser, UserChanges
from projections.identity import UserView, list_users


class CreateUserRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    username: Username
    password: NewPassword
    role: Role = Role.VIEWER
    email: Email | None = None
    full_name: FullName = ""


class UpdateUserRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Only the fields given change; `email: null` clears the address."""

    role: Role | msgspec.UnsetType = msgspec.UNSET
    is_active: bool | msgspec.UnsetType = msgspec.UNSET
    email: Email | None | msgspec.UnsetType = msgspec.UNSET
    full_name: FullName | msgspec.UnsetType = msgspec.UNSET
    password: NewPassword | msgspec.UnsetType = msgspec.UNSET


class UserDeleted(msgspec.Struct, frozen=True, kw_only=True):
    message: str
    user_id: UUID


class TwoFactorReset(msgspec.Struct, frozen=True, kw_only=True):
    message: str
    user_id: UUID


class UsersController(Controller):
    path = "/api/users"
    tags = ["users"]

    @get("/", operation_id="listUsers", opt={"permission": Permission.USERS_MANAGE})
    async def list_all(self, identity_deps: NamedDependency[IdentityDeps]) -> list[UserView]:
        """Every user not deleted, by user name."""
        async with identity_deps.reads.pool.connection() as conn:
            return await list_users(conn)

    @post("/", operation_id="createUser", status_code=201, opt={"permission": Permission.USERS_MANAGE})
    async def create(
        self,
        data: JSONBody[CreateUserRequest],
        principal: NamedDependency[Principal],
        identity_deps: NamedDependency[IdentityDeps],
    ) -> AccountView:
        """Add a user (a viewer unless `role` says otherwise). 409 USER_EXISTS: names of deleted users stay taken."""
        user = await identity_deps.identity.create_user(
            principal,
            NewUser(username=data.username, password=data.password, role=data.role, email=data.email,
                    full_name=data.full_name),
        )  # fmt: skip
        await identity_deps.reads.wait_identity()
        return AccountView.of(user)

    @patch("/{user_id:uuid}", operation_id="updateUser", opt={"permission": Permission.USERS_MANAGE})
    async def update(
        self,
        user_id: FromPath[UUID],
        data: JSONBody[UpdateUserRequest],
        principal: NamedDependency[Principal],
        identity_deps: NamedDependency[IdentityDeps],
    ) -> AccountView:
        """Change a user's role, profile, password or whether it is active. Deactivating ends its
        sessions and stops its keys before the answer is sent; a new password ends its sessions.
        409 LAST_ADMIN when no active administrator would be left."""
        changes = UserChanges(
            role=data.role, active=data.is_active, email=data.email, full_name=data.full_name, password=data.password
        )
        user = await identity_deps.identity.update_user(principal, user_id, changes)
        await identity_deps.reads.wait_identity()
        return AccountView.of(user)

    @delete("/{user_id:uuid}", operation_id="deleteUser", status_code=200, opt={"permission": Permission.USERS_MANAGE})
    async def remove(
        self, user_id: FromPath[UUID], principal: NamedDependency[Principal], identity_deps: NamedDependency[IdentityDeps]
    ) -> UserDeleted:
        """Delete a user: its sessions end and its keys stop at once; its history stays, its name stays taken.
        409 LAST_ADMIN for the last active administrator."""
        stored = await identity_deps.identity.delete_user(principal, user_id)
        await identity_deps.reads.wait_projected(stored.position, projector="identity")
        return UserDeleted(message="User deleted", user_id=user_id)

    @delete("/{user_id:uuid}/2fa", operation_id="resetUserTwoFactor", status_code=200,
            opt={"permission": Permission.USERS_MANAGE})  # fmt: skip
    async def reset_two_factor(
        self, user_id: FromPath[UUID], principal: NamedDependency[Principal], identity_deps: NamedDependency[IdentityDeps]
    ) -> TwoFactorReset:
        """Reset a user's two-factor authentication (a lost device): its secret and backup codes are gone,
        it signs in with the password alone, and its sessions end (the caller's own stays).
        409 TOTP_NOT_ENABLED when two-factor is neither on nor being set up."""
        stored = await identity_deps.identity.reset_totp(principal, user_id)
        await identity_deps.reads.wait_projected(stored.position, projector="identity")
        return TwoFactorReset(message="Two-factor authentication reset; the user's sessions were ended",
                              user_id=user_id)  # fmt: skip
