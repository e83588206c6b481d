"""The identity adapters without a database: tokens, the secret box, TOTP, argon2, random secrets."""

from __future__ import annotations

import asyncio
import base64
import re
from datetime import datetime, timedelta, timezone
from uuid import UUID, uuid4

import jwt
import pyotp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.identity import (
    Argon2Hasher,
    FernetBox,
    PyotpVerifier,
    RandomSecrets,
    SecretBoxError,
    TokenService,
    derive_box_key,
    qr_png_data_uri,
)
from domain.errors import TokenExpired, TokenInvalid
from domain.access import Role
from domain.identity_requests import SessionGrant, UserSummary
from domain.identity_rules import SESSION_LIFETIME
from domain.ports import Clock
from tests.kit import ManualClock

T0 = datetime(2026, 5, 4, 12, 0, tzinfo=timezone.utc)
USER, SESSION = uuid4(), uuid4()


def service(clock: Clock | None = None, *, secret: bytes = b"k" * 64, kid: str = "one") -> TokenService:
    return TokenService({kid: secret}, kid, clock=clock or ManualClock(T0))


def grant(generation: int = 1) -> SessionGrant:
    user = UserSummary(user_id=USER, username="ada", email=None, full_name="", role=Role.ADMIN, permissions=[],
                       active=True, totp_enabled=False)
    return SessionGrant(session_id=SESSION, user_id=USER, generation=generation, expires_at=T0 + SESSION_LIFETIME,
                        user=user, position=1)


ISSUED = service().issue(grant(4))


async def test_tokens_carry_the_session_and_the_generation() -> None:
    tokens = service()
    pair = tokens.issue(grant(4))
    access = await tokens.verify_access(pair.access_token)
    refresh = await tokens.verify_refresh(pair.refresh_token)
    assert (access.user_id, access.session_id, access.expires_at) == (USER, SESSION, T0 + timedelta(minutes=30))
    assert (refresh.session_id, refresh.generation, refresh.expires_at) == (SESSION, 4, T0 + SESSION_LIFETIME)
    assert pair.expires_in == 1800 and pair.token_type == "bearer"
    assert jwt.get_unverified_header(pair.access_token)["kid"] == "one"


async def test_an_access_token_is_no_refresh_token_and_the_reverse() -> None:
    tokens = service()
    with pytest.raises(TokenInvalid, match="not a refresh token"):
        await tokens.verify_refresh(ISSUED.access_token)
    with pytest.raises(TokenInvalid, match="not an access token"):
        await tokens.verify_access(ISSUED.refresh_token)


async def test_expired_tokens_say_so() -> None:
    clock = ManualClock(T0)
    tokens = service(clock)
    clock.set(T0 + timedelta(minutes=30))
    with pytest.raises(TokenExpired) as expired:
        await tokens.verify_access(ISSUED.access_token)
    assert expired.value.code == "TOKEN_EXPIRED"
    await tokens.verify_refresh(ISSUED.refresh_token)
    clock.set(T0 + SESSION_LIFETIME)
    with pytest.raises(TokenExpired):
        await tokens.verify_refresh(ISSUED.refresh_token)


async def test_tokens_of_other_keys_or_algorithms_are_refused() -> None:
    with pytest.raises(TokenInvalid):
        await service(secret=b"x" * 64).verify_access(ISSUED.access_token)
    with pytest.raises(TokenInvalid):
        await service(kid="two").verify_access(ISSUED.access_token)
    claims = jwt.decode(ISSUED.access_token, options={"verify_signature": False})
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": "one"})
    for forged in (unsigned, unsigned + "x", "", "a.b.c", "not a token"):
        with pytest.raises(TokenInvalid):
            await service().verify_access(forged)


def _verify_both(token: str) -> list[BaseException | None]:
    async def both() -> list[BaseException | None]:
        tokens = service()
        outcomes: list[BaseException | None] = []
        for verify in (tokens.verify_access, tokens.verify_refresh):
            try:
                await verify(token)
            except (TokenInvalid, TokenExpired) as refused:
                outcomes.append(refused)
            else:
                outcomes.append(None)
        return outcomes

    return asyncio.run(both())


@settings(max_examples=300, deadline=None)
@given(which=st.sampled_from(["access", "refresh"]), position=st.integers(min_value=0), new=st.integers(0, 255))
def test_a_token_changed_in_any_byte_is_refused(which: str, position: int, new: int) -> None:
    raw = bytearray((ISSUED.access_token if which == "access" else ISSUED.refresh_token).encode())
    position %= len(raw)
    if raw[position] == new:
        new = (new + 1) % 256
    raw[position] = new
    outcomes = _verify_both(raw.decode("latin-1"))
    assert all(isinstance(o, TokenInvalid) for o in outcomes), outcomes


def test_the_last_signature_character_cannot_be_swapped_for_one_decoding_alike() -> None:
    token = ISSUED.access_token
    last = token[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twins = [c for c in alphabet if c != last and alphabet.index(c) >> 2 == alphabet.index(last) >> 2]
    assert twins and base64.urlsafe_b64decode(token.split(".")[2] + "=") == base64.urlsafe_b64decode(
        token.split(".")[2][:-1] + twins[0] + "="
    )
    for twin in twins:
        assert all(isinstance(o, TokenInvalid) for o in _verify_both(token[:-1] + twin))


def test_the_secret_box_opens_only_what_its_keys_sealed() -> None:
    box = FernetBox([derive_box_key("passphrase one")])
    sealed = box.seal("JBSWY3DPEHPK3PXP")
    assert "JBSWY3DPEHPK3PXP" not in sealed and box.open(sealed) == "JBSWY3DPEHPK3PXP"
    assert derive_box_key("passphrase one") == derive_box_key("passphrase one") != derive_box_key("other")
    with pytest.raises(SecretBoxError):
        FernetBox([derive_box_key("other")]).open(sealed)
    rotated = FernetBox([derive_box_key("new"), derive_box_key("passphrase one")])
    assert rotated.open(sealed) == "JBSWY3DPEHPK3PXP"


def test_totp_codes_match_their_step_within_one_step() -> None:
    verifier = PyotpVerifier()
    secret = verifier.new_secret()
    step = pyotp.TOTP(secret).timecode(T0)
    assert verifier.matching_step(secret, pyotp.TOTP(secret).at(T0), T0) == step
    assert verifier.matching_step(secret, pyotp.TOTP(secret).at(T0 - timedelta(seconds=30)), T0) == step - 1
    assert verifier.matching_step(secret, pyotp.TOTP(secret).at(T0 + timedelta(seconds=30)), T0) == step + 1
    assert verifier.matching_step(secret, pyotp.TOTP(secret).at(T0 - timedelta(seconds=90)), T0) is None
    uri = verifier.provisioning_uri(secret, username="ada")
    assert uri.startswith("otpauth://totp/WattLedger:ada?") and f"secret={secret}" in uri


def test_qr_codes_are_png_data_uris() -> None:
    uri = qr_png_data_uri("otpauth://totp/WattLedger:ada?secret=JBSWY3DPEHPK3PXP&issuer=WattLedger")
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.partition(",")[2]).startswith(b"\x89PNG")


def test_backup_codes_are_random_and_readable() -> None:
    secrets = RandomSecrets()
    codes = secrets.backup_codes(10)
    assert len(set(codes)) == 10
    assert all(re.fullmatch(r"([A-HJ-NP-Z2-9]{4}-){3}[A-HJ-NP-Z2-9]{4}", c) for c in codes)
    assert len(secrets.key_secret()) >= 43 and secrets.key_secret() != secrets.key_secret()
    assert secrets.digest("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


async def test_argon2_hashes_verify_and_refuse() -> None:
    hasher = Argon2Hasher(time_cost=1, memory_cost=8192, parallelism=1)
    hashed = await hasher.hash("correct horse battery")
    assert hashed.startswith("$argon2id$") and "correct horse battery" not in hashed
    assert await hasher.verify(hashed, "correct horse battery")
    assert not await hasher.verify(hashed, "correct horse batterY")
    assert not await hasher.verify("not a hash", "correct horse battery")
    assert not hasher.needs_rehash(hashed)
    assert Argon2Hasher(time_cost=2, memory_cost=8192, parallelism=1).needs_rehash(hashed)


def test_uuids_in_tokens_are_strings() -> None:
    claims = jwt.decode(ISSUED.refresh_token, options={"verify_signature": False})
    assert UUID(claims["sid"]) == SESSION and claims["gen"] == 4 and claims["typ"] == "refresh"
