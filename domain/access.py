"""Roles, API-key scopes and permissions, and the `Principal` who makes a request.

Who may do what: each role is a set of permissions (`ROLE_PERMISSIONS`), an API key acts with
its owner's permissions cut down to its scope (`permissions_for`), and a `Principal` answers the
checks every use case and guard asks (`require`, `check_method`, `require_session`, ...).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal
from uuid import UUID

import msgspec

from domain.errors import InsufficientPermissions, SessionRequired

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


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
    ALERTS_MANAGE = "ALERTS_MANAGE"


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
            Permission.ALERTS_MANAGE,
        }
    ),
    Role.VIEWER: frozenset({Permission.DEVICES_VIEW}),
}

SCOPE_PERMISSIONS: dict[Scope, frozenset[Permission]] = {
    Scope.READ: frozenset({Permission.DEVICES_VIEW}),
    Scope.READ_WRITE: frozenset(
        {Permission.DEVICES_VIEW, Permission.DEVICES_CONTROL, Permission.DEVICES_MANAGE, Permission.ALERTS_MANAGE}
    ),
    Scope.ADMIN: ALL_PERMISSIONS,
}


def permissions_for(role: Role, scope: Scope | None = None) -> frozenset[Permission]:
    """A role's permissions; with a key's `scope`, only those of them the scope allows."""
    granted = ROLE_PERMISSIONS[role]
    return granted if scope is None else granted & SCOPE_PERMISSIONS[scope]


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

