"""Identity adapters: argon2 password hashing, the secret box, TOTP, random secrets, JWTs.

Everything secret the system keeps outside the event store lives in the
PostgreSQL schema `wl_auth`, which no read model rebuild touches:

- `wl_auth.secrets`: the secret box key, generated once, unless the setting
  `WATTLEDGER_SECRET_KEY` is given (a key stored earlier still opens what it sealed).
- `wl_auth.signing_keys`: the JWT signing keys (`kid`, secret, created_at);
  tokens are signed with the newest and verified with any of them.

The schema also holds the last use of API keys and last activity of sessions, noted by
per-request authentication; their tables are created and written by
`projections.identity_activity`, after `create_auth_schema`.

Logs name key ids at most, never a secret, token or password.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

import argon2
import jwt
import msgspec
import psycopg
import pyotp
import segno
import structlog
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from adapters.errors import AdapterError
from domain.errors import TokenExpired, TokenInvalid
from domain.identity_requests import SessionGrant
from domain.identity_rules import ACCESS_TOKEN_LIFETIME
from domain.ports import (
    AccessClaims,
    Clock,
    PasswordHasher,
    SecretBox,
    SecretMaker,
    TokenVerifier,
    TotpVerifier,
)

log = structlog.get_logger(__name__)

AUTH_SCHEMA = "wl_auth"
SECRETS_TABLE = f"{AUTH_SCHEMA}.secrets"
SIGNING_KEYS_TABLE = f"{AUTH_SCHEMA}.signing_keys"

AUTH_DDL = f"""
CREATE TABLE IF NOT EXISTS {SECRETS_TABLE} (
    name text PRIMARY KEY,
    value text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {SIGNING_KEYS_TABLE} (
    kid text PRIMARY KEY,
    secret text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""

# Serialises creating the schema and the first keys between processes starting at once.
_AUTH_LOCK = 0x574C_4155

_BOX_KEY_NAME = "secret_box"


async def create_auth_schema(conn: psycopg.AsyncConnection[Any]) -> None:
    """Create `wl_auth` if missing, in the caller's transaction, holding the lock every process
    creating it, its tables or its first keys takes to the end of that transaction."""
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_AUTH_LOCK,))
    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {AUTH_SCHEMA}")


async def ensure_auth_schema(conn: psycopg.AsyncConnection[Any]) -> None:
    """Create the `wl_auth` schema and the secrets' tables if missing (safe to run from several processes)."""
    async with conn.transaction():
        await create_auth_schema(conn)
        await conn.execute(AUTH_DDL)


# ---- passwords ----


class Argon2Hasher(PasswordHasher):
    """argon2id (argon2-cffi, its RFC 9106 defaults unless given); hashing runs in a worker thread."""

    def __init__(self, *, time_cost: int = 3, memory_cost: int = 65536, parallelism: int = 4) -> None:
        self._hasher = argon2.PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism)

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        return await asyncio.to_thread(self._verify, password_hash, password)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether the hash was made with other parameters than this hasher's."""
        return self._hasher.check_needs_rehash(password_hash)


# ---- the secret box ----


class SecretBoxError(AdapterError):
    """A sealed secret that none of the box's keys opens (the key was changed or lost)."""


def derive_box_key(secret_key: str) -> bytes:
    """The Fernet key for a `WATTLEDGER_SECRET_KEY` of any form (a passphrase or random text)."""
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"wattledger secret box").derive(
        secret_key.encode()
    )
    return base64.urlsafe_b64encode(raw)


class FernetBox(SecretBox):
    """Fernet (AES-128-CBC with HMAC-SHA256): seals with the first key, opens with any of them."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("a secret box needs at least one key")
        self._fernet = MultiFernet([Fernet(k) for k in keys])

    def seal(self, plain: str) -> str:
        return self._fernet.encrypt(plain.encode()).decode("ascii")

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode()
        except (InvalidToken, UnicodeError):
            raise SecretBoxError(
                "a sealed secret does not open with the configured key (was WATTLEDGER_SECRET_KEY changed?)"
            ) from None


async def open_secret_box(database_url: str, secret_key: str | None = None) -> FernetBox:
    """The secret box: keyed by `secret_key` if given, else by a key generated once and kept in `wl_auth.secrets`.

    A key kept there earlier still opens what it sealed after `secret_key` is set.
    """
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await ensure_auth_schema(conn)
        if secret_key is None:
            cur = await conn.execute(
                f"INSERT INTO {SECRETS_TABLE} (name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                (_BOX_KEY_NAME, Fernet.generate_key().decode("ascii")),
            )
            if cur.rowcount:
                log.info("identity.secret_box_key_created", table=SECRETS_TABLE)
        cur = await conn.execute(f"SELECT value FROM {SECRETS_TABLE} WHERE name = %s", (_BOX_KEY_NAME,))
        row = await cur.fetchone()
    keys = [derive_box_key(secret_key)] if secret_key is not None else []
    if row is not None:
        keys.append(str(row[0]).encode("ascii"))
    return FernetBox(keys)


# ---- TOTP and random secrets ----


class PyotpVerifier(TotpVerifier):
    """RFC 6238 codes (6 digits, 30 s steps) with pyotp; a code of the step before or after is accepted too."""

    def __init__(self, *, issuer: str = "WattLedger", window: int = 1) -> None:
        self.issuer = issuer
        self.window = window

    def new_secret(self) -> str:
        return pyotp.random_base32()

    def provisioning_uri(self, secret: str, *, username: str) -> str:
        return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=self.issuer)

    def matching_step(self, secret: str, code: str, at: datetime) -> int | None:
        totp = pyotp.TOTP(secret)
        current = totp.timecode(at)
        for step in sorted(range(current - self.window, current + self.window + 1), key=lambda s: abs(s - current)):
            if hmac.compare_digest(totp.generate_otp(step), code):
                return step
        return None


BACKUP_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
"""32 symbols without look-alikes (no I, O, 0, 1): 16 of them are 80 random bits."""


class RandomSecrets(SecretMaker):
    """`secrets`-module randomness; SHA-256 digests (the secrets are far too random to guess)."""

    def key_secret(self) -> str:
        return secrets.token_urlsafe(32)

    def backup_codes(self, count: int) -> list[str]:
        codes = []
        for _ in range(count):
            raw = "".join(secrets.choice(BACKUP_CODE_ALPHABET) for _ in range(16))
            codes.append("-".join(raw[i : i + 4] for i in range(0, 16, 4)))
        return codes

    def digest(self, secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()


def qr_png_data_uri(text: str, *, scale: int = 5) -> str:
    """`data:image/png;base64,...` of a QR code of `text` (e.g. the otpauth URI of a set-up)."""
    return str(segno.make(text, error="m").png_data_uri(scale=scale, border=2))


# ---- tokens ----


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
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_AUTH_LOCK,))
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

