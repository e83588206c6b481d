"""Identity adapters: argon2 password hashing, the secret box, TOTP, random secrets.

The `wl_auth` schema they keep their secrets in is `adapters.auth_schema`; JWTs are
`adapters.tokens`. Both are re-exported here for the callers that import them from this module.

Logs name key ids at most, never a secret, token or password.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from datetime import datetime

import argon2
import psycopg
import pyotp
import segno
import structlog
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from adapters.auth_schema import (
    AUTH_DDL,
    AUTH_SCHEMA,
    SECRETS_TABLE,
    SIGNING_KEYS_TABLE,
    create_auth_schema,
    ensure_auth_schema,
)
from adapters.errors import AdapterError
from adapters.tokens import ALGORITHM, ISSUER, RefreshClaims, TokenPair, TokenService
from domain.ports import PasswordHasher, SecretBox, SecretMaker, TotpVerifier

__all__ = [
    "ALGORITHM",
    "AUTH_DDL",
    "AUTH_SCHEMA",
    "BACKUP_CODE_ALPHABET",
    "ISSUER",
    "SECRETS_TABLE",
    "SIGNING_KEYS_TABLE",
    "Argon2Hasher",
    "FernetBox",
    "PyotpVerifier",
    "RandomSecrets",
    "RefreshClaims",
    "SecretBoxError",
    "TokenPair",
    "TokenService",
    "create_auth_schema",
    "derive_box_key",
    "ensure_auth_schema",
    "open_secret_box",
    "qr_png_data_uri",
]

log = structlog.get_logger(__name__)

_BOX_KEY_NAME = "secret_box"

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
