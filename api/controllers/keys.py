"""API keys: issue (the key is shown once), list (never the key), revoke.

A key is sent as `X-API-Key: <key>` and acts as its owner, with the owner's permissions
cut down to the key's scope: `read` (view, safe methods only), `read-write` (view,
control and manage devices) or `admin` (everything the owner may do). A key outlives its
owner's sign-outs and password changes, so issuing one is confirmed with the current
password or a current TOTP code; only sessions and `admin`-scope keys revoke keys.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

import msgspec
from litestar import Controller, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from api.controllers.auth_schemas import NO_STORE, AppCode, Password
from api.deps import IdentityDeps
from domain.access import Permission, Principal, Scope
from domain.identity_requests import NewKey, StepUp
from projections.identity import ApiKeyView, list_api_keys


class CreateKeyRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`current_password`, or `totp_code` (two-factor on), confirms that the account's owner asks for the key."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100, description="what the key is for")]
    scope: Scope = Scope.READ
    expires_at: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    current_password: Password | None = None
    totp_code: AppCode | None = None


class IssuedKeyView(msgspec.Struct, frozen=True, kw_only=True):
    """A new key. `key` is in this answer only: the server keeps nothing but its SHA-256."""

    key_id: UUID
    key: str
    prefix: str
    name: str
    scope: Scope
    expires_at: datetime | None
    message: str


class KeyRevoked(msgspec.Struct, frozen=True, kw_only=True):
    message: str
    key_id: UUID


class KeysController(Controller):
    path = "/api/keys"
    tags = ["keys"]

    @post("/", operation_id="createApiKey", status_code=201, opt={"authenticated": True})
    async def create(
        self,
        data: JSONBody[CreateKeyRequest],
        principal: NamedDependency[Principal],
        identity_deps: NamedDependency[IdentityDeps],
    ) -> Response[IssuedKeyView]:
        """Issue a key for the signed-in user (keys cannot issue keys: 403 SESSION_REQUIRED), confirmed by
        `current_password` or `totp_code` (else 403 STEP_UP_REQUIRED; wrong: 401 INVALID_CREDENTIALS or
        INVALID_TOTP_CODE, counted as failed sign-ins)."""
        issued = await identity_deps.identity.issue_key(
            principal,
            NewKey(name=data.name, scope=data.scope, expires_at=data.expires_at),
            StepUp(current_password=data.current_password, totp_code=data.totp_code),
        )
        await identity_deps.reads.wait_projected(issued.position, projector="identity")
        answer = IssuedKeyView(
            key_id=issued.key_id, key=issued.key, prefix=issued.prefix, name=issued.name, scope=issued.scope,
            expires_at=issued.expires_at, message="Store this key now: it is not shown again",
        )  # fmt: skip
        return Response(answer, status_code=201, headers=NO_STORE)

    @get("/", operation_id="listApiKeys", opt={"authenticated": True})
    async def list_all(
        self,
        principal: NamedDependency[Principal],
        identity_deps: NamedDependency[IdentityDeps],
        everyone: FromQuery[bool] = False,
    ) -> list[ApiKeyView]:
        """The caller's keys that are not revoked, with when each was last used (never the key itself).
        `?everyone=true` lists every user's keys (USERS_MANAGE)."""
        if everyone:
            principal.require(Permission.USERS_MANAGE)
        async with identity_deps.reads.pool.connection() as conn:
            return await list_api_keys(conn, None if everyone else principal.user_id)

    @delete("/{key_id:uuid}", operation_id="revokeApiKey", status_code=200, opt={"authenticated": True})
    async def revoke(
        self, key_id: FromPath[UUID], principal: NamedDependency[Principal], identity_deps: NamedDependency[IdentityDeps]
    ) -> KeyRevoked:
        """Revoke one of the caller's keys (with USERS_MANAGE, anyone's); it stops working at once.
        Keys other than `admin`-scope ones cannot: 403 SESSION_REQUIRED."""
        stored = await identity_deps.identity.revoke_key(principal, key_id)
        await identity_deps.reads.wait_projected(stored.position, projector="identity")
        return KeyRevoked(message="API key revoked", key_id=key_id)
