"""Identity end to end below HTTP: handlers, argon2, the secret box, TOTP, JWTs and read models on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from uuid import uuid4

import jwt
import psycopg
import pyotp
import pytest
from psycopg_pool import AsyncConnectionPool

from adapters.contract import decode_envelope, encode_envelope
from adapters.eventstore import StoreUnitOfWork, WattLedger, ensure_events_schema, store_env
from adapters.identity import (
    SIGNING_KEYS_TABLE,
    Argon2Hasher,
    FernetBox,
    PyotpVerifier,
    RandomSecrets,
    TokenPair,
    TokenService,
    derive_box_key,
    open_secret_box,
)
from domain.errors import (
    AccountDisabled,
    ApiKeyInvalid,
    RefreshTokenReused,
    SessionEnded,
    SetupAlreadyDone,
    TotpRequired,
)
from domain.access import Permission, Principal, Role, Scope
from domain.identity import ApiKey, User
from domain.identity_requests import Login, NewKey, NewUser, SetupAdmin, StepUp, UserChanges
from domain.identity_handlers import IdentityHandlers
from domain.ports import Clock
from projections.engine import ProjectionEngine
from projections.identity import (
    API_KEYS_TABLE,
    SESSIONS_TABLE,
    USERS_TABLE,
    ApiKeyView,
    IdentityProjector,
    IdentityReadModels,
    SessionView,
    UserView,
    list_api_keys,
    list_sessions,
    list_users,
)
from projections.identity_activity import KEY_USAGE_TABLE, SESSION_ACTIVITY_TABLE, create_activity_tables
from tests.kit import ManualClock

PASSWORD = "correct horse battery"
OLGA_PASSWORD = "an operator's passphrase"


@dataclass
class Identity:
    app: WattLedger
    engine: ProjectionEngine
    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]]
    handlers: IdentityHandlers
    tokens: TokenService
    box: FernetBox
    clock: ManualClock
    database_url: str

    def catch_up(self) -> None:
        self.engine.catch_up("identity")


@pytest.fixture
def ledger(database_url: str) -> Iterator[tuple[WattLedger, ProjectionEngine]]:
    ensure_events_schema(database_url)
    app = WattLedger(store_env(database_url))
    engine = ProjectionEngine(app, database_url, [IdentityProjector()], batch_size=5)
    engine.setup()
    yield app, engine
    engine.close()
    app.close()


def build(app: WattLedger, pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]], box: FernetBox,
          clock: Clock) -> IdentityHandlers:
    return IdentityHandlers(
        StoreUnitOfWork(app), Argon2Hasher(time_cost=1, memory_cost=8192, parallelism=1), box, PyotpVerifier(),
        RandomSecrets(), clock, IdentityReadModels(pool),
    )


@pytest.fixture
async def identity(database_url: str, ledger: tuple[WattLedger, ProjectionEngine]) -> AsyncIterator[Identity]:
    app, engine = ledger
    clock = ManualClock(datetime(2026, 3, 9, 8, 30, tzinfo=timezone.utc))
    box = await open_secret_box(database_url)
    tokens = await TokenService.open(database_url, clock=clock)
    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
        database_url, min_size=1, max_size=4, open=False
    )
    await pool.open(wait=True)
    async with pool.connection() as conn:
        await create_activity_tables(conn)
    try:
        yield Identity(app=app, engine=engine, pool=pool, handlers=build(app, pool, box, clock), tokens=tokens,
                       box=box, clock=clock, database_url=database_url)
    finally:
        await pool.close()


async def sign_in(idy: Identity, username: str, password: str, code: str | None = None) -> TokenPair:
    grant = await idy.handlers.login(Login(username=username, password=password, totp_code=code, ip="127.0.0.1",
                                           user_agent="pytest"))
    return idy.tokens.issue(grant)


async def principal_of(idy: Identity, pair: TokenPair) -> Principal:
    claims = await idy.tokens.verify_access(pair.access_token)
    return await idy.handlers.authenticate_session(claims.session_id, claims.user_id)


def table_rows(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(database_url) as conn:
        return {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
            for table in (USERS_TABLE, SESSIONS_TABLE, API_KEYS_TABLE)
        }


def every_event(app: WattLedger) -> list[tuple[int, Any]]:
    notifications = app.recorder.select_notifications(start=0, limit=10_000)
    return [(n.id, app.mapper.to_domain_event(n)) for n in notifications]


async def test_the_identity_flow_end_to_end(identity: Identity) -> None:
    idy = identity
    handlers = idy.handlers
    plain: list[str] = [PASSWORD, OLGA_PASSWORD]

    assert await handlers.setup_required()
    await handlers.setup(SetupAdmin(username="root", password=PASSWORD, email="root@home.lan", full_name="Root"))
    assert not await handlers.setup_required()
    root_pair = await sign_in(idy, "root", PASSWORD)
    root = await principal_of(idy, root_pair)  # not projected yet: found in the event store
    assert root.role is Role.ADMIN and root.permissions == frozenset(Permission)

    olga_id = (await handlers.create_user(root, NewUser(username="olga", password=OLGA_PASSWORD,
                                                        role=Role.OPERATOR))).user_id
    vic_id = (await handlers.create_user(root, NewUser(username="vic", password=PASSWORD))).user_id
    olga_pair = await sign_in(idy, "olga", OLGA_PASSWORD)
    olga = await principal_of(idy, olga_pair)

    enrollment = await handlers.totp_setup(olga, StepUp(current_password=OLGA_PASSWORD))
    plain += [enrollment.secret, *enrollment.backup_codes]
    totp = pyotp.TOTP(enrollment.secret)
    await handlers.totp_verify(olga, totp.at(idy.clock.now()))
    with pytest.raises(TotpRequired):
        await sign_in(idy, "olga", OLGA_PASSWORD)
    idy.clock.advance(seconds=30)
    second_pair = await sign_in(idy, "olga", OLGA_PASSWORD, totp.at(idy.clock.now()))
    await sign_in(idy, "olga", OLGA_PASSWORD, enrollment.backup_codes[0])

    issued = await handlers.issue_key(olga, NewKey(name="home assistant", scope=Scope.READ_WRITE),
                                      StepUp(current_password=OLGA_PASSWORD))
    plain += [issued.key, issued.key.split("_", 2)[2]]
    as_key = await handlers.authenticate_key(issued.key)
    assert as_key.permissions == {
        Permission.DEVICES_VIEW, Permission.DEVICES_CONTROL, Permission.DEVICES_MANAGE, Permission.ALERTS_MANAGE,
    }  # fmt: skip

    presented = await idy.tokens.verify_refresh(second_pair.refresh_token)
    refreshed = idy.tokens.issue(await handlers.refresh(presented.session_id, presented.generation))
    stale = await idy.tokens.verify_refresh(second_pair.refresh_token)
    with pytest.raises(RefreshTokenReused):
        await handlers.refresh(stale.session_id, stale.generation)
    with pytest.raises(SessionEnded):
        await principal_of(idy, refreshed)

    await handlers.update_user(root, vic_id, UserChanges(active=False, full_name="Vic"))
    with pytest.raises(AccountDisabled):
        await sign_in(idy, "vic", PASSWORD)
    revoked = await handlers.issue_key(root, NewKey(name="old", scope=Scope.ADMIN), StepUp(current_password=PASSWORD))
    plain += [revoked.key]
    await handlers.revoke_key(root, revoked.key_id)

    idy.catch_up()
    with pytest.raises(ApiKeyInvalid):
        await handlers.authenticate_key(revoked.key)
    assert (await principal_of(idy, olga_pair)).user_id == olga_id  # now from the read models
    async with idy.pool.connection() as conn:
        users = await list_users(conn)
        olga_sessions = await list_sessions(conn, olga_id, current=olga.session_id, now=idy.clock.now())
        keys = await list_api_keys(conn, olga_id)
        all_keys = await list_api_keys(conn, None, include_revoked=True)
    assert [(u.username, u.role, u.is_active, u.totp_enabled) for u in users] == [
        ("olga", Role.OPERATOR, True, True), ("root", Role.ADMIN, True, False), ("vic", Role.VIEWER, False, False),
    ]
    assert len(olga_sessions) == 2 and [s.is_current for s in olga_sessions] == [True, False]
    assert [(k.name, k.scope, k.prefix, k.last_used_at is not None) for k in keys] == [
        ("home assistant", Scope.READ_WRITE, issued.prefix, True)
    ]
    assert len(all_keys) == 2 and all_keys[1].revoked_at is not None
    reader = IdentityReadModels(idy.pool)
    assert (await reader.api_key_ids(olga_id), await reader.api_key_ids(root.user_id)) == ([issued.key_id], [])
    for view in (UserView, SessionView, ApiKeyView):
        assert not {"password_hash", "key_hash", "secret", "secret_sealed"} & set(view.__struct_fields__)

    before = table_rows(idy.database_url)
    assert all(before.values())
    idy.engine.rebuild("identity")
    assert table_rows(idy.database_url) == before

    events = every_event(idy.app)
    secrets = set(plain)
    for _, event in events:
        match event:
            case User.Registered() | User.PasswordChanged():
                secrets.add(event.password_hash)
            case User.TotpSetupStarted():
                secrets.add(event.secret_sealed)
                secrets.update(event.backup_code_hashes)
            case ApiKey.Issued():
                secrets.add(event.key_hash)
    assert len(secrets) > len(plain)
    for pair in (root_pair, olga_pair, second_pair, refreshed):
        secrets.update({pair.access_token, pair.refresh_token})
    bodies = [encode_envelope(position, event) for position, event in events]
    assert {decode_envelope(b).aggregate for b in bodies} == {"roster", "user", "session", "apikey"}
    for body in bodies:
        text = body.decode()
        leaked = [s for s in secrets if s in text]
        assert leaked == [], (decode_envelope(body).event, leaked)
        assert not {"password_hash", "secret_sealed", "backup_code_hashes", "key_hash"} & set(
            decode_envelope(body).data
        )


async def test_signing_key_rotation_keeps_old_tokens_valid(identity: Identity) -> None:
    idy = identity
    other_process = await TokenService.open(idy.database_url, clock=idy.clock)
    assert other_process.signing_kid == idy.tokens.signing_kid
    user_id, session_id = uuid4(), uuid4()
    old = idy.tokens.access_token(user_id, session_id)
    old_kid = idy.tokens.signing_kid
    new_kid = await idy.tokens.rotate()
    new = idy.tokens.access_token(user_id, session_id)
    assert new_kid != old_kid
    assert jwt.get_unverified_header(old)["kid"] == old_kid and jwt.get_unverified_header(new)["kid"] == new_kid
    for tokens in (idy.tokens, other_process):
        assert (await tokens.verify_access(old)).session_id == session_id
        assert (await tokens.verify_access(new)).user_id == user_id
    assert other_process.signing_kid == new_kid
    later = await TokenService.open(idy.database_url, clock=idy.clock)
    assert later.signing_kid == new_kid
    with psycopg.connect(idy.database_url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {SIGNING_KEYS_TABLE}").fetchone()
    assert row is not None and row[0] == 2


async def test_the_secret_box_key_is_made_once_and_kept(database_url: str) -> None:
    first = await open_secret_box(database_url)
    sealed = first.seal("JBSWY3DPEHPK3PXP")
    assert (await open_secret_box(database_url)).open(sealed) == "JBSWY3DPEHPK3PXP"
    configured = await open_secret_box(database_url, "a configured passphrase")
    assert configured.open(sealed) == "JBSWY3DPEHPK3PXP"
    assert FernetBox([derive_box_key("a configured passphrase")]).open(configured.seal("x")) == "x"


async def test_a_configured_key_stores_no_key(database_url: str) -> None:
    box = await open_secret_box(database_url, "a configured passphrase")
    assert box.open(box.seal("s")) == "s"
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM wl_auth.secrets").fetchone()
    assert row is not None and row[0] == 0


async def test_two_processes_running_setup_at_once_make_one_admin(
    database_url: str, identity: Identity
) -> None:
    second_app = WattLedger(store_env(database_url))
    try:
        handlers = [identity.handlers, build(second_app, identity.pool, identity.box, identity.clock)]
        outcomes = await asyncio.gather(
            *(h.setup(SetupAdmin(username=name, password=PASSWORD)) for h, name in zip(handlers, ("ann", "bob"))),
            return_exceptions=True,
        )
    finally:
        second_app.close()
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], SetupAlreadyDone), outcomes
    assert sum(isinstance(e, User.Registered) for _, e in every_event(identity.app)) == 1


async def test_key_use_and_session_activity_are_noted_at_most_once_a_minute(identity: Identity) -> None:
    idy = identity
    await idy.handlers.setup(SetupAdmin(username="root", password=PASSWORD))
    pair = await sign_in(idy, "root", PASSWORD)
    root = await principal_of(idy, pair)
    issued = await idy.handlers.issue_key(root, NewKey(name="k"), StepUp(current_password=PASSWORD))
    first_use = idy.clock.now()
    await idy.handlers.authenticate_key(issued.key)
    fresh_process = build(idy.app, idy.pool, idy.box, idy.clock)
    idy.clock.advance(seconds=30)
    await fresh_process.authenticate_key(issued.key)
    await fresh_process.authenticate_session(root.session_id or issued.key_id, root.user_id)

    def noted() -> tuple[Any, Any]:
        with psycopg.connect(idy.database_url) as conn:
            used = conn.execute(f"SELECT last_used_at FROM {KEY_USAGE_TABLE}").fetchall()
            active = conn.execute(f"SELECT last_activity FROM {SESSION_ACTIVITY_TABLE}").fetchall()
        return used, active

    used, active = noted()
    assert used == [(first_use,)] and active == [(first_use,)]
    idy.clock.advance(seconds=31)
    await fresh_process.authenticate_key(issued.key)
    used, _ = noted()
    assert used == [(idy.clock.now(),)]
