"""Per-request authentication: the `Principal` of a session's access token or of an API key.

`authenticate_headers` is the one entry for every edge (REST guards, WebSocket, socket.io,
SSE, NATS request/reply): it reads `Authorization: Bearer` or `X-API-Key`, has the access token
checked by the `TokenVerifier` port, and asks `Authentication` for the principal. An API key may
also come as `Authorization: Bearer <key>` (how Prometheus and most scrapers send a credential):
a key's text starts with its prefix, which no access token does.

These checks store no event and never trust a read model: each asks the event store for the
current version of the session or key and of its user (one indexed query through the
`IdentityReader` port), and uses the state of each at exactly that version, kept in memory from
an earlier request (`VersionedStates`) or loaded from the store. A revocation, a logout, a
deactivation or a role change is in force for the next request, whatever the projectors do.
Activity is noted in plain tables.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import TypeVar
from uuid import UUID

from domain.access import Principal, permissions_for
from domain.errors import (
    AccountDisabled,
    ApiKeyInvalid,
    AuthenticationRequired,
    SessionEnded,
    TokenExpired,
    TokenInvalid,
)
from domain.identity import ApiKey, Session, User
from domain.identity_core import A, IdentityCore
from domain.identity_requests import AccountState, ApiKeyState, SessionState
from domain.identity_rules import API_KEY_PREFIX, parse_api_key
from domain.ports import TokenVerifier

S = TypeVar("S")

REMEMBERED_STATES = 10_000
"""Sessions, keys and users whose state per-request checks keep in memory (by their stored version)."""


class Authentication(IdentityCore):
    """Who makes a request: `authenticate_session` for a verified access token, `authenticate_key` for a key."""

    @cached_property
    def _states(self) -> VersionedStates:
        return VersionedStates(REMEMBERED_STATES)

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


API_KEY_HEADER = "x-api-key"


async def authenticate_headers(
    headers: Mapping[str, str], tokens: TokenVerifier, identity: Authentication
) -> Principal:
    """The principal of `Authorization: Bearer <access token or API key>` or `X-API-Key` (header names in
    any case).

    Raises AuthenticationRequired without either, and the token or key errors of
    `TokenVerifier` and `Authentication` for bad ones. Writes no event.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    authorization = lowered.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TokenInvalid("send the access token as `Authorization: Bearer <token>`")
        if token.strip().startswith(f"{API_KEY_PREFIX}_"):
            return await identity.authenticate_key(token.strip())
        claims = await tokens.verify_access(token.strip())
        return await identity.authenticate_session(claims.session_id, claims.user_id)
    api_key = lowered.get(API_KEY_HEADER)
    if api_key is not None:
        return await identity.authenticate_key(api_key)
    raise AuthenticationRequired("this needs `Authorization: Bearer <access token>` or an `X-API-Key` header")
