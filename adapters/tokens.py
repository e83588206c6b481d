"""JWTs: the `TokenService` that signs and verifies access and refresh tokens, and its claims.

The signing keys live in `wl_auth.signing_keys` (`adapters.auth_schema`). Logs name key ids at
most, never a secret or token.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

import jwt
import msgspec
import psycopg
import structlog

from adapters.auth_schema import AUTH_LOCK, SIGNING_KEYS_TABLE, ensure_auth_schema
from domain.errors import TokenExpired, TokenInvalid
from domain.identity_requests import SessionGrant
from domain.identity_rules import ACCESS_TOKEN_LIFETIME
from domain.ports import AccessClaims, Clock, TokenVerifier

log = structlog.get_logger("adapters.identity")

class RefreshClaims(msgspec.Struct, frozen=True, kw_only=True):
    user_id: UUID
    session_id: UUID
    generation: int
    expires_at: datetime


class TokenPair(msgspec.Struct, frozen=True, kw_only=True):
    """What sign-in and refresh answer with; `expires_in` is the access token's lifetime in seconds."""

    access_token: str
    refresh_token: str
    token_type: str = "bearer"
    expires_in: int


ISSUER = "wattledger"
ALGORITHM = "HS256"
_RELOAD_AT_MOST_EVERY_S = 1.0


def _canonical_segments(token: str) -> bool:
    """Three base64url segments, each exactly as a JWT encoder writes it.

    Base64 ignores the spare low bits of a segment's last character, so without
    this check a signature with such a bit flipped would still verify.
    """
    parts = token.split(".")
    if len(parts) != 3 or not token.isascii():
        return False
    for part in parts:
        try:
            raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        except (binascii.Error, ValueError):
            return False
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != part:
            return False
    return True


class TokenService(TokenVerifier):
    """HS256 JWTs with a `kid` header; keys in `wl_auth.signing_keys`.

    Access tokens (`typ: access`, `sub`, `sid`) last ACCESS_TOKEN_LIFETIME;
    refresh tokens (`typ: refresh`, `sub`, `sid`, `gen`) last as long as their
    session. Neither is accepted as the other. `rotate()` adds a key and signs
    with it from then on; tokens signed with older keys stay valid until they
    expire. A `kid` this process has not seen (another process rotated) makes
    it reload the keys, at most once a second. Expiry is judged by `clock`.
    """

    def __init__(
        self, keys: Mapping[str, bytes], signing_kid: str, *, clock: Clock, database_url: str | None = None
    ) -> None:
        if signing_kid not in keys:
            raise ValueError("the signing key must be one of the keys")
        self._keys = dict(keys)
        self._signing_kid = signing_kid
        self._clock = clock
        self._database_url = database_url
        self._reloaded_at = float("-inf")

    @classmethod
    async def open(cls, database_url: str, *, clock: Clock) -> TokenService:
        """The service over the stored keys; the first key is generated if there is none."""
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await ensure_auth_schema(conn)
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUTH_LOCK,))
                cur = await conn.execute(f"SELECT count(*) FROM {SIGNING_KEYS_TABLE}")
                row = await cur.fetchone()
                if row is None or row[0] == 0:
                    await cls._insert_key(conn)
            keys, newest = await cls._load(conn)
        return cls(keys, newest, clock=clock, database_url=database_url)

    @staticmethod
    async def _insert_key(conn: psycopg.AsyncConnection[Any]) -> str:
        kid = secrets.token_hex(8)
        secret = base64.urlsafe_b64encode(secrets.token_bytes(64)).decode("ascii")
        await conn.execute(f"INSERT INTO {SIGNING_KEYS_TABLE} (kid, secret) VALUES (%s, %s)", (kid, secret))
        log.info("identity.signing_key_created", kid=kid)
        return kid

    @staticmethod
    async def _load(conn: psycopg.AsyncConnection[Any]) -> tuple[dict[str, bytes], str]:
        cur = await conn.execute(f"SELECT kid, secret FROM {SIGNING_KEYS_TABLE} ORDER BY created_at, kid")
        rows = await cur.fetchall()
        if not rows:
            raise LookupError(f"no signing keys in {SIGNING_KEYS_TABLE}")
        return {str(kid): base64.urlsafe_b64decode(str(secret)) for kid, secret in rows}, str(rows[-1][0])

    @property
    def signing_kid(self) -> str:
        return self._signing_kid

    async def rotate(self) -> str:
        """Store a new signing key and sign with it from now on; returns its kid."""
        database_url = self._need_database()
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            kid = await self._insert_key(conn)
            keys, _ = await self._load(conn)
        self._keys = keys
        self._signing_kid = kid
        return kid

    async def reload(self) -> None:
        """Read the stored keys again (keys rotated by another process); sign with the newest."""
        database_url = self._need_database()
        self._reloaded_at = time.monotonic()
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            self._keys, self._signing_kid = await self._load(conn)

    def _need_database(self) -> str:
        if self._database_url is None:
            raise RuntimeError("this token service keeps its keys in memory only")
        return self._database_url

    def _sign(self, claims: dict[str, Any]) -> str:
        now = int(self._clock.now().timestamp())
        payload = {"iss": ISSUER, "iat": now, **claims}
        return jwt.encode(payload, self._keys[self._signing_kid], algorithm=ALGORITHM,
                          headers={"kid": self._signing_kid})

    def access_token(self, user_id: UUID, session_id: UUID) -> str:
        expires = self._clock.now() + ACCESS_TOKEN_LIFETIME
        return self._sign({"typ": "access", "sub": str(user_id), "sid": str(session_id),
                           "exp": int(expires.timestamp())})

    def refresh_token(self, user_id: UUID, session_id: UUID, generation: int, expires_at: datetime) -> str:
        return self._sign({"typ": "refresh", "sub": str(user_id), "sid": str(session_id), "gen": generation,
                           "exp": int(expires_at.timestamp())})

    def issue(self, grant: SessionGrant) -> TokenPair:
        """The access and refresh tokens of a started or refreshed session."""
        return TokenPair(
            access_token=self.access_token(grant.user_id, grant.session_id),
            refresh_token=self.refresh_token(grant.user_id, grant.session_id, grant.generation, grant.expires_at),
            expires_in=int(ACCESS_TOKEN_LIFETIME.total_seconds()),
        )

    async def verify_access(self, token: str) -> AccessClaims:
        """The claims of a genuine, unexpired access token. Raises TokenExpired, TokenInvalid."""
        user_id, session_id, expires_at, _ = await self._verify(token, "access")
        return AccessClaims(user_id=user_id, session_id=session_id, expires_at=expires_at)

    async def verify_refresh(self, token: str) -> RefreshClaims:
        """The claims of a genuine, unexpired refresh token. Raises TokenExpired, TokenInvalid.

        Whether its generation is the session's current one is the handlers' `refresh` to decide.
        """
        user_id, session_id, expires_at, payload = await self._verify(token, "refresh")
        generation = payload.get("gen")
        if not isinstance(generation, int) or isinstance(generation, bool) or generation < 1:
            raise TokenInvalid("malformed token")
        return RefreshClaims(user_id=user_id, session_id=session_id, generation=generation, expires_at=expires_at)

    async def _key(self, kid: str) -> bytes | None:
        key = self._keys.get(kid)
        if key is None and self._database_url is not None:
            if time.monotonic() - self._reloaded_at >= _RELOAD_AT_MOST_EVERY_S:
                await self.reload()
                key = self._keys.get(kid)
        return key

    async def _verify(self, token: str, typ: str) -> tuple[UUID, UUID, datetime, dict[str, Any]]:
        if not isinstance(token, str) or not _canonical_segments(token):
            raise TokenInvalid("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenInvalid("malformed token") from None
        kid = header.get("kid")
        key = await self._key(kid) if isinstance(kid, str) else None
        if key is None:
            raise TokenInvalid("token signed with an unknown key")
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "require": ["exp", "iat", "iss", "typ", "sub", "sid"],
                },
            )
        except (jwt.PyJWTError, ValueError, TypeError):
            raise TokenInvalid("invalid token") from None
        if payload.get("typ") != typ:
            raise TokenInvalid(f"not an {typ} token" if typ == "access" else f"not a {typ} token")
        exp = payload.get("exp")
        if not isinstance(exp, int) or isinstance(exp, bool):
            raise TokenInvalid("malformed token")
        try:
            user_id, session_id = UUID(str(payload["sub"])), UUID(str(payload["sid"]))
            expires_at = datetime.fromtimestamp(exp, timezone.utc)
        except (ValueError, OverflowError, OSError):
            raise TokenInvalid("malformed token") from None
        if self._clock.now() >= expires_at:
            raise TokenExpired("the token has expired")
        return user_id, session_id, expires_at, payload
