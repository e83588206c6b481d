"""The identity use cases over fake ports: an in-memory store that can make writers collide, fake crypto."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TypeVar
from uuid import UUID, uuid4

import msgspec
import pytest
from eventsourcing.domain import Aggregate

from api.errors import status_of
from domain.errors import (
    AccountDisabled,
    ApiKeyInvalid,
    ApiKeyNotFound,
    InsufficientPermissions,
    InvalidCredentials,
    InvalidRequest,
    InvalidTotpCode,
    LastAdmin,
    PasswordPolicy,
    RefreshTokenReused,
    SessionEnded,
    SessionNotFound,
    SessionRequired,
    SetupAlreadyDone,
    StepUpRequired,
    TokenExpired,
    TokenInvalid,
    TotpNotEnabled,
    TotpRequired,
    UserExists,
    UserNotFound,
    WrongPassword,
)
from domain.access import Permission, Principal, Role, Scope
from domain.identity import ROSTER_ID, ApiKey, EndReason, Roster, Session, User, user_id_for
from domain.identity_requests import Login, NewKey, NewUser, SessionGrant, SetupAdmin, StepUp, UserChanges
from domain.identity_rules import MAX_SESSIONS, api_key_text
from domain.identity_handlers import IdentityHandlers
from domain.ports import IdentityReader, PasswordHasher, SecretBox, SecretMaker, TotpVerifier
from tests.kit import ManualClock, MemoryStore

A = TypeVar("A", bound=Aggregate)
T0 = datetime(2026, 5, 4, 12, 0, tzinfo=timezone.utc)
PASSWORD = "correct horse battery"
CONFIRMED = StepUp(current_password=PASSWORD)


class StoreReader(IdentityReader):
    """The versions of aggregates as the store holds them, and the activity noted."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.touched: list[UUID] = []
        self.asked: list[list[UUID]] = []

    async def versions(self, aggregate_ids: Sequence[UUID]) -> dict[UUID, int]:
        self.asked.append(list(aggregate_ids))
        stored = {i: self.store.version(i) for i in aggregate_ids}
        return {i: version for i, version in stored.items() if version is not None}

    async def touch_session(self, session_id: UUID, at: datetime) -> None:
        self.touched.append(session_id)

    async def touch_key(self, key_id: UUID, at: datetime) -> None:
        self.touched.append(key_id)

    async def api_key_ids(self, user_id: UUID) -> list[UUID]:
        keys = [self.store.load(e.originator_id) for e in self.store.of_type(ApiKey.Issued)]
        return [k.id for k in keys if isinstance(k, ApiKey) and k.user_id == user_id and not k.revoked]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class FakeHasher(PasswordHasher):
    async def hash(self, password: str) -> str:
        return f"fake-hash:{_digest(password)}"

    async def verify(self, password_hash: str, password: str) -> bool:
        return password_hash == f"fake-hash:{_digest(password)}"


class ReversingBox(SecretBox):
    def seal(self, plain: str) -> str:
        return f"sealed:{plain[::-1]}"

    def open(self, sealed: str) -> str:
        assert sealed.startswith("sealed:")
        return sealed.removeprefix("sealed:")[::-1]


def code_for(secret: str, step: int) -> str:
    return f"{int(_digest(f'{secret}:{step}'), 16) % 10**6:06d}"


def step_of(at: datetime) -> int:
    return int(at.timestamp()) // 30


class FakeTotp(TotpVerifier):
    def __init__(self) -> None:
        self.issued = 0

    def new_secret(self) -> str:
        self.issued += 1
        return f"TOTPSECRET{self.issued:04d}"

    def provisioning_uri(self, secret: str, *, username: str) -> str:
        return f"otpauth://totp/WattLedger:{username}?secret={secret}"

    def matching_step(self, secret: str, code: str, at: datetime) -> int | None:
        current = step_of(at)
        return next((s for s in (current, current - 1, current + 1) if code_for(secret, s) == code), None)


class CountingSecrets(SecretMaker):
    def __init__(self) -> None:
        self.made = 0

    def key_secret(self) -> str:
        self.made += 1
        return f"keysecret{self.made:04d}"

    def backup_codes(self, count: int) -> list[str]:
        self.made += 1
        return [f"BK{self.made:02d}-{i:04d}-XXXX" for i in range(count)]

    def digest(self, secret: str) -> str:
        return _digest(secret)


class World(msgspec.Struct, kw_only=True):
    handlers: IdentityHandlers
    store: MemoryStore
    reader: StoreReader
    clock: ManualClock
    totp: FakeTotp


def world() -> World:
    store, clock, totp = MemoryStore(), ManualClock(T0), FakeTotp()
    reader = StoreReader(store)
    handlers = IdentityHandlers(store, FakeHasher(), ReversingBox(), totp, CountingSecrets(), clock, reader)
    return World(handlers=handlers, store=store, reader=reader, clock=clock, totp=totp)


async def set_up(w: World, username: str = "root") -> Principal:
    """First-run setup and a sign-in of the first admin; returns its principal."""
    await w.handlers.setup(SetupAdmin(username=username, password=PASSWORD, email="root@home.lan"))
    return await principal(w, await sign_in(w, username))


async def sign_in(w: World, username: str, password: str = PASSWORD, code: str | None = None) -> SessionGrant:
    return await w.handlers.login(
        Login(username=username, password=password, totp_code=code, ip="127.0.0.1", user_agent="pytest")
    )


async def principal(w: World, grant: SessionGrant) -> Principal:
    return await w.handlers.authenticate_session(grant.session_id, grant.user_id)


async def add_user(w: World, admin: Principal, username: str, role: Role = Role.VIEWER) -> UUID:
    created = await w.handlers.create_user(admin, NewUser(username=username, password=PASSWORD, role=role))
    return created.user_id


def active_sessions(w: World, user_id: UUID) -> list[UUID]:
    sessions = [w.store.load(e.originator_id) for e in w.store.of_type(Session.Started)]
    return [s.id for s in sessions if isinstance(s, Session) and s.user_id == user_id and s.is_active(w.clock.now())]


def roster_admins(w: World) -> set[UUID]:
    roster = w.store.load(ROSTER_ID)
    assert isinstance(roster, Roster)
    return roster.admins


# ---- setup ----


async def test_setup_happens_once() -> None:
    w = world()
    assert await w.handlers.setup_required()
    admin = await w.handlers.setup(SetupAdmin(username="root", password=PASSWORD))
    assert admin.role is Role.ADMIN and Permission.USERS_MANAGE in admin.permissions
    assert not await w.handlers.setup_required()
    with pytest.raises(SetupAlreadyDone) as refused:
        await w.handlers.setup(SetupAdmin(username="other", password=PASSWORD))
    assert status_of(refused.value) == 409
    assert roster_admins(w) == {admin.user_id}


async def test_two_setups_at_once_make_one_admin() -> None:
    w = world()
    w.store.collide(2)
    outcomes = await asyncio.gather(
        w.handlers.setup(SetupAdmin(username="first", password=PASSWORD)),
        w.handlers.setup(SetupAdmin(username="second", password=PASSWORD)),
        return_exceptions=True,
    )
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], SetupAlreadyDone)
    assert len(w.store.of_type(User.Registered)) == 1 and len(roster_admins(w)) == 1


async def test_a_weak_first_password_stores_nothing() -> None:
    w = world()
    with pytest.raises(PasswordPolicy):
        await w.handlers.setup(SetupAdmin(username="root", password="short"))
    assert w.store.events == {} and await w.handlers.setup_required()


# ---- users ----


async def test_a_user_name_is_taken_whatever_its_case_even_after_deletion() -> None:
    w = world()
    admin = await set_up(w)
    ann = await add_user(w, admin, "Ann")
    with pytest.raises(UserExists):
        await add_user(w, admin, "ann")
    await w.handlers.delete_user(admin, ann)
    with pytest.raises(UserExists):
        await add_user(w, admin, "ANN")
    with pytest.raises(UserNotFound):
        await w.handlers.update_user(admin, ann, UserChanges(full_name="Ann"))


async def test_only_user_managers_manage_users() -> None:
    w = world()
    admin = await set_up(w)
    await add_user(w, admin, "olga", Role.OPERATOR)
    olga = await principal(w, await sign_in(w, "olga"))
    with pytest.raises(InsufficientPermissions):
        await add_user(w, olga, "mallory")
    with pytest.raises(InsufficientPermissions):
        await w.handlers.update_user(olga, olga.user_id, UserChanges(role=Role.ADMIN))


@pytest.mark.parametrize(
    "change",
    [UserChanges(role=Role.OPERATOR), UserChanges(active=False), None],
    ids=["demote", "deactivate", "delete"],
)
async def test_the_last_admin_cannot_be_demoted_deactivated_or_deleted(change: UserChanges | None) -> None:
    w = world()
    admin = await set_up(w)
    with pytest.raises(LastAdmin):
        if change is None:
            await w.handlers.delete_user(admin, admin.user_id)
        else:
            await w.handlers.update_user(admin, admin.user_id, change)
    assert roster_admins(w) == {admin.user_id}
    root = w.store.load(admin.user_id)
    assert isinstance(root, User) and root.is_active_admin


async def test_with_a_second_admin_one_can_step_down() -> None:
    w = world()
    admin = await set_up(w)
    bea = await add_user(w, admin, "bea", Role.ADMIN)
    assert roster_admins(w) == {admin.user_id, bea}
    await w.handlers.update_user(admin, admin.user_id, UserChanges(role=Role.VIEWER))
    assert roster_admins(w) == {bea}
    await w.handlers.update_user(admin, admin.user_id, UserChanges(role=Role.ADMIN))
    await w.handlers.update_user(admin, bea, UserChanges(active=False))
    await w.handlers.update_user(admin, bea, UserChanges(active=True))
    assert roster_admins(w) == {admin.user_id, bea}


async def test_two_admins_demoting_each_other_at_once_leave_one_admin() -> None:
    w = world()
    root = await set_up(w)
    bea_id = await add_user(w, root, "bea", Role.ADMIN)
    bea = await principal(w, await sign_in(w, "bea"))
    w.store.collide(2)
    outcomes = await asyncio.gather(
        w.handlers.update_user(root, bea_id, UserChanges(role=Role.VIEWER)),
        w.handlers.update_user(bea, root.user_id, UserChanges(role=Role.VIEWER)),
        return_exceptions=True,
    )
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], LastAdmin)
    assert w.store.conflicts >= 1
    assert len(roster_admins(w)) == 1
    admins = [u for u in map(w.store.load, (root.user_id, bea_id)) if isinstance(u, User) and u.is_active_admin]
    assert [a.id for a in admins] == list(roster_admins(w))


async def test_deactivating_a_user_ends_its_sessions_and_stops_its_keys_until_reactivated() -> None:
    w = world()
    admin = await set_up(w)
    ann_id = await add_user(w, admin, "ann")
    grant = await sign_in(w, "ann")
    ann = await principal(w, grant)
    key = await w.handlers.issue_key(ann, NewKey(name="script", scope=Scope.READ), CONFIRMED)
    await w.handlers.update_user(admin, ann_id, UserChanges(active=False))
    ended = w.store.load(grant.session_id)
    assert isinstance(ended, Session) and ended.end_reason is EndReason.USER_DISABLED
    with pytest.raises(SessionEnded):
        await principal(w, grant)
    with pytest.raises(AccountDisabled):
        await w.handlers.authenticate_key(key.key)
    with pytest.raises(AccountDisabled):
        await sign_in(w, "ann")
    await w.handlers.update_user(admin, ann_id, UserChanges(active=True))
    assert (await w.handlers.authenticate_key(key.key)).user_id == ann_id


async def test_a_deleted_users_keys_stop_working() -> None:
    w = world()
    admin = await set_up(w)
    ann_id = await add_user(w, admin, "ann")
    key = await w.handlers.issue_key(await principal(w, await sign_in(w, "ann")), NewKey(name="k"), CONFIRMED)
    await w.handlers.delete_user(admin, ann_id)
    with pytest.raises(ApiKeyInvalid):
        await w.handlers.authenticate_key(key.key)
    with pytest.raises(InvalidCredentials):
        await sign_in(w, "ann")


async def test_an_admins_password_reset_ends_the_users_sessions() -> None:
    w = world()
    admin = await set_up(w)
    ann_id = await add_user(w, admin, "ann")
    grant = await sign_in(w, "ann")
    await w.handlers.update_user(admin, ann_id, UserChanges(password="a new passphrase"))
    with pytest.raises(SessionEnded):
        await principal(w, grant)
    with pytest.raises(InvalidCredentials):
        await sign_in(w, "ann")
    await sign_in(w, "ann", "a new passphrase")


# ---- sign-in ----


async def test_login_checks_the_password_without_saying_which_part_was_wrong() -> None:
    w = world()
    await set_up(w)
    with pytest.raises(InvalidCredentials) as wrong_password:
        await sign_in(w, "root", "not the password")
    with pytest.raises(InvalidCredentials) as unknown_user:
        await sign_in(w, "nobody")
    assert str(wrong_password.value) == str(unknown_user.value)
    assert status_of(wrong_password.value) == 401
    grant = await sign_in(w, "ROOT")
    assert grant.generation == 1 and grant.expires_at == T0 + timedelta(days=7)
    assert grant.user.username == "root" and grant.position == w.store.position


async def enable_totp(w: World, who: Principal) -> tuple[str, list[str]]:
    enrollment = await w.handlers.totp_setup(who, CONFIRMED)
    await w.handlers.totp_verify(who, code_for(enrollment.secret, step_of(w.clock.now())))
    return enrollment.secret, enrollment.backup_codes


async def test_with_two_factor_a_code_is_required_and_accepted_once() -> None:
    w = world()
    admin = await set_up(w)
    secret, _ = await enable_totp(w, admin)
    with pytest.raises(TotpRequired) as missing:
        await sign_in(w, "root")
    assert missing.value.code == "TOTP_REQUIRED" and status_of(missing.value) == 401
    with pytest.raises(InvalidTotpCode):
        await sign_in(w, "root", code="000000" if code_for(secret, step_of(T0)) != "000000" else "111111")
    w.clock.advance(seconds=30)
    code = code_for(secret, step_of(w.clock.now()))
    await sign_in(w, "root", code=code)
    with pytest.raises(InvalidTotpCode, match="already used"):
        await sign_in(w, "root", code=code)
    with pytest.raises(InvalidTotpCode):
        await sign_in(w, "root", code=code_for(secret, step_of(w.clock.now()) - 1))
    w.clock.advance(seconds=30)
    await sign_in(w, "root", code=code_for(secret, step_of(w.clock.now())))


async def test_the_code_that_enabled_two_factor_cannot_sign_in() -> None:
    w = world()
    admin = await set_up(w)
    enrollment = await w.handlers.totp_setup(admin, CONFIRMED)
    code = code_for(enrollment.secret, step_of(w.clock.now()))
    await w.handlers.totp_verify(admin, code)
    with pytest.raises(InvalidTotpCode):
        await sign_in(w, "root", code=code)


async def test_a_backup_code_signs_in_once() -> None:
    w = world()
    admin = await set_up(w)
    _, codes = await enable_totp(w, admin)
    await sign_in(w, "root", code=codes[3].lower())
    with pytest.raises(InvalidTotpCode):
        await sign_in(w, "root", code=codes[3])
    await sign_in(w, "root", code=codes[4])
    [first, second] = w.store.of_type(User.BackupCodeUsed)
    assert isinstance(first, User.BackupCodeUsed) and isinstance(second, User.BackupCodeUsed)
    assert (first.index, second.index) == (3, 4)


async def test_the_secret_and_codes_are_in_events_only_sealed_and_hashed() -> None:
    w = world()
    admin = await set_up(w)
    enrollment = await w.handlers.totp_setup(admin, CONFIRMED)
    assert enrollment.otpauth_uri.endswith(f"secret={enrollment.secret}")
    stored = repr(w.store.all_events())
    assert enrollment.secret not in stored
    assert not any(code in stored for code in enrollment.backup_codes)
    assert PASSWORD not in stored


async def test_two_factor_is_disabled_only_with_a_valid_code() -> None:
    w = world()
    admin = await set_up(w)
    secret, codes = await enable_totp(w, admin)
    with pytest.raises(TotpRequired):
        await w.handlers.totp_disable(admin, "")
    with pytest.raises(InvalidTotpCode):
        await w.handlers.totp_disable(admin, "NOT-A-CODE")
    await w.handlers.totp_disable(admin, codes[0])
    await sign_in(w, "root")


async def test_a_fourth_session_ends_the_oldest() -> None:
    w = world()
    admin = await set_up(w)
    grants = [await sign_in(w, "root") for _ in range(MAX_SESSIONS)]
    assert len(active_sessions(w, admin.user_id)) == MAX_SESSIONS
    oldest = w.store.load(admin.session_id or uuid4())
    assert isinstance(oldest, Session) and oldest.end_reason is EndReason.EVICTED
    with pytest.raises(SessionEnded):
        await w.handlers.authenticate_session(oldest.id, admin.user_id)
    assert set(active_sessions(w, admin.user_id)) == {g.session_id for g in grants}


async def test_a_sign_in_after_a_logout_evicts_nobody() -> None:
    w = world()
    admin = await set_up(w)
    second = await sign_in(w, "root")
    await sign_in(w, "root")
    await w.handlers.logout(await principal(w, second))
    await sign_in(w, "root")
    assert w.store.of_type(Session.Ended) and all(
        isinstance(e, Session.Ended) and e.reason == "logout" for e in w.store.of_type(Session.Ended)
    )
    assert len(active_sessions(w, admin.user_id)) == 3


async def test_sign_ins_racing_each_other_still_leave_at_most_three_sessions() -> None:
    w = world()
    admin = await set_up(w)
    await sign_in(w, "root")
    w.store.collide(2)
    await asyncio.gather(sign_in(w, "root"), sign_in(w, "root"))
    assert w.store.conflicts >= 1
    assert len(active_sessions(w, admin.user_id)) == MAX_SESSIONS
    assert len(w.store.of_type(Session.Started)) == 4


async def test_logout_everywhere_ends_every_session() -> None:
    w = world()
    admin = await set_up(w)
    await sign_in(w, "root")
    assert await w.handlers.logout(admin, everywhere=True, step_up=CONFIRMED) == 2
    assert active_sessions(w, admin.user_id) == []


# ---- refresh ----


async def test_refresh_rotates_and_a_reused_token_ends_the_session() -> None:
    w = world()
    await set_up(w)
    grant = await sign_in(w, "root")
    second = await w.handlers.refresh(grant.session_id, 1)
    third = await w.handlers.refresh(grant.session_id, second.generation)
    assert (second.generation, third.generation) == (2, 3)
    with pytest.raises(RefreshTokenReused) as reused:
        await w.handlers.refresh(grant.session_id, 1)
    assert reused.value.code == "TOKEN_REUSED" and status_of(reused.value) == 401
    session = w.store.load(grant.session_id)
    assert isinstance(session, Session) and session.end_reason is EndReason.REUSE_DETECTED
    with pytest.raises(SessionEnded):
        await w.handlers.refresh(grant.session_id, 3)
    with pytest.raises(SessionEnded):
        await principal(w, grant)


async def test_a_refresh_token_works_once() -> None:
    w = world()
    await set_up(w)
    grant = await sign_in(w, "root")
    await w.handlers.refresh(grant.session_id, grant.generation)
    with pytest.raises(RefreshTokenReused):
        await w.handlers.refresh(grant.session_id, grant.generation)


async def test_two_refreshes_with_one_token_at_once_are_reuse() -> None:
    w = world()
    await set_up(w)
    grant = await sign_in(w, "root")
    w.store.collide(2)
    outcomes = await asyncio.gather(
        w.handlers.refresh(grant.session_id, 1), w.handlers.refresh(grant.session_id, 1), return_exceptions=True
    )
    assert sum(isinstance(o, RefreshTokenReused) for o in outcomes) == 1
    session = w.store.load(grant.session_id)
    assert isinstance(session, Session) and session.end_reason is EndReason.REUSE_DETECTED


async def test_refreshing_an_expired_or_unknown_session_is_refused() -> None:
    w = world()
    await set_up(w)
    grant = await sign_in(w, "root")
    with pytest.raises(TokenInvalid):
        await w.handlers.refresh(uuid4(), 1)
    with pytest.raises(TokenInvalid):
        await w.handlers.refresh(grant.session_id, 2)
    w.clock.advance(days=7)
    with pytest.raises(TokenExpired):
        await w.handlers.refresh(grant.session_id, 1)
    session = w.store.load(grant.session_id)
    assert isinstance(session, Session) and session.end_reason is EndReason.EXPIRED


# ---- per request ----


async def test_per_request_checks_store_no_event_and_note_activity() -> None:
    w = world()
    admin = await set_up(w)
    before = w.store.position
    again = await w.handlers.authenticate_session(admin.session_id or uuid4(), admin.user_id)
    assert again == admin and again.kind == "user" and again.permissions == frozenset(Permission)
    assert w.store.position == before and admin.session_id in w.reader.touched


async def test_a_check_reads_the_store_once_per_change_and_follows_every_change_at_once() -> None:
    w = world()
    admin = await set_up(w)
    await add_user(w, admin, "olga", Role.OPERATOR)
    olga = await principal(w, await sign_in(w, "olga"))
    key = await w.handlers.issue_key(olga, NewKey(name="ha", scope=Scope.READ_WRITE), CONFIRMED)
    loads: list[UUID] = []
    aggregate = w.store.aggregate

    async def counted(aggregate_id: UUID, kind: type[A]) -> A | None:
        loads.append(aggregate_id)
        return await aggregate(aggregate_id, kind)

    w.store.aggregate = counted  # type: ignore[method-assign]
    await w.handlers.authenticate_key(key.key)
    assert loads == [key.key_id], "olga's user and session were read by her own sign-in check"
    for _ in range(5):
        assert Permission.DEVICES_MANAGE in (await w.handlers.authenticate_key(key.key)).permissions
        await w.handlers.authenticate_session(olga.session_id or uuid4(), olga.user_id)
    assert loads == [key.key_id], "a state is loaded again only when its version changed"
    assert w.reader.asked[-2] == [key.key_id, olga.user_id], "one query gives the key's and its owner's versions"

    await w.handlers.update_user(admin, olga.user_id, UserChanges(role=Role.VIEWER))
    loads.clear()
    assert (await w.handlers.authenticate_key(key.key)).permissions == {Permission.DEVICES_VIEW}
    assert loads == [olga.user_id], "the demotion gave the user a new version"
    await w.handlers.revoke_key(olga, key.key_id)
    with pytest.raises(ApiKeyInvalid):
        await w.handlers.authenticate_key(key.key)
    await w.handlers.logout(olga)
    with pytest.raises(SessionEnded):
        await w.handlers.authenticate_session(olga.session_id or uuid4(), olga.user_id)


async def test_a_session_token_of_another_user_is_refused() -> None:
    w = world()
    admin = await set_up(w)
    with pytest.raises(TokenInvalid):
        await w.handlers.authenticate_session(admin.session_id or uuid4(), uuid4())
    with pytest.raises(TokenInvalid):
        await w.handlers.authenticate_session(uuid4(), admin.user_id)


async def test_a_key_acts_with_its_owners_permissions_within_its_scope() -> None:
    w = world()
    admin = await set_up(w)
    await add_user(w, admin, "olga", Role.OPERATOR)
    olga = await principal(w, await sign_in(w, "olga"))
    issued = await w.handlers.issue_key(olga, NewKey(name="ha", scope=Scope.ADMIN), CONFIRMED)
    assert issued.key.startswith(f"{issued.prefix}") and issued.key == api_key_text(
        issued.key_id, issued.key.split("_", 2)[2]
    )
    as_key = await w.handlers.authenticate_key(issued.key)
    assert as_key.kind == "key" and as_key.actor == f"key:{issued.key_id}"
    assert as_key.permissions == olga.permissions and Permission.USERS_MANAGE not in as_key.permissions
    reader = await w.handlers.authenticate_key(
        (await w.handlers.issue_key(olga, NewKey(name="ro", scope=Scope.READ), CONFIRMED)).key
    )
    assert reader.permissions == {Permission.DEVICES_VIEW} and reader.read_only
    assert issued.key not in repr(w.store.all_events())


async def test_wrong_revoked_expired_or_forged_keys_are_refused() -> None:
    w = world()
    admin = await set_up(w)
    issued = await w.handlers.issue_key(admin, NewKey(name="k", expires_at=T0 + timedelta(days=1)), CONFIRMED)
    for bad in (issued.key + "x", api_key_text(issued.key_id, "guess"), "wl_nothex_x", "",
                api_key_text(admin.user_id, "x"), api_key_text(uuid4(), "x")):
        with pytest.raises(ApiKeyInvalid):
            await w.handlers.authenticate_key(bad)
    w.clock.advance(days=1)
    with pytest.raises(ApiKeyInvalid, match="expired"):
        await w.handlers.authenticate_key(issued.key)
    other = await w.handlers.issue_key(admin, NewKey(name="k2"), CONFIRMED)
    await w.handlers.revoke_key(admin, other.key_id)
    with pytest.raises(ApiKeyInvalid, match="revoked"):
        await w.handlers.authenticate_key(other.key)


async def test_keys_cannot_issue_keys_or_change_account_security() -> None:
    w = world()
    admin = await set_up(w)
    as_key = await w.handlers.authenticate_key((await w.handlers.issue_key(admin, NewKey(name="k"), CONFIRMED)).key)
    for attempt in (
        w.handlers.issue_key(as_key, NewKey(name="more"), CONFIRMED),
        w.handlers.change_password(as_key, PASSWORD, "another passphrase"),
        w.handlers.totp_setup(as_key, CONFIRMED),
        w.handlers.logout(as_key),
    ):
        with pytest.raises(SessionRequired):
            await attempt
    with pytest.raises(InvalidRequest):
        await w.handlers.issue_key(admin, NewKey(name="past", expires_at=T0 - timedelta(seconds=1)), CONFIRMED)


async def test_only_owners_or_user_managers_revoke_keys_and_end_sessions() -> None:
    w = world()
    admin = await set_up(w)
    await add_user(w, admin, "vic")
    vic = await principal(w, await sign_in(w, "vic"))
    admins_key = await w.handlers.issue_key(admin, NewKey(name="k"), CONFIRMED)
    with pytest.raises(ApiKeyNotFound):
        await w.handlers.revoke_key(vic, admins_key.key_id)
    with pytest.raises(SessionNotFound):
        await w.handlers.end_session(vic, admin.session_id or uuid4())
    with pytest.raises(SessionNotFound):
        await w.handlers.end_session(vic, admins_key.key_id)
    await w.handlers.end_session(admin, vic.session_id or uuid4(), CONFIRMED)
    ended = w.store.load(vic.session_id or uuid4())
    assert isinstance(ended, Session) and ended.end_reason is EndReason.REVOKED


async def test_changing_ones_password_ends_every_other_session() -> None:
    w = world()
    admin = await set_up(w)
    other = await sign_in(w, "root")
    with pytest.raises(WrongPassword):
        await w.handlers.change_password(admin, "not it at all", "a new passphrase")
    with pytest.raises(PasswordPolicy):
        await w.handlers.change_password(admin, PASSWORD, "weak")
    await w.handlers.change_password(admin, PASSWORD, "a new passphrase")
    with pytest.raises(SessionEnded):
        await principal(w, other)
    assert (await w.handlers.authenticate_session(admin.session_id or uuid4(), admin.user_id)) == admin
    await sign_in(w, "root", "a new passphrase")


# ---- step-up: what a stolen access token alone cannot do ----


def wrong_code(secret: str, at: datetime) -> str:
    return next(c for c in ("000000", "111111", "222222") if c not in {code_for(secret, step_of(at) + d)
                                                                      for d in (-1, 0, 1)})


async def test_issuing_a_key_needs_the_current_password_or_a_current_code() -> None:
    w = world()
    admin = await set_up(w)
    before = w.store.position
    for proof, refused in (
        (None, StepUpRequired), (StepUp(), StepUpRequired), (StepUp(current_password="a guess"), InvalidCredentials),
        (StepUp(totp_code="123456"), InvalidTotpCode),
    ):  # fmt: skip
        with pytest.raises(refused) as caught:
            await w.handlers.issue_key(admin, NewKey(name="k"), proof)
        assert status_of(caught.value) == (403 if refused is StepUpRequired else 401)
    assert w.store.position == before, "a refused step-up stores nothing"
    assert (await w.handlers.issue_key(admin, NewKey(name="k"), CONFIRMED)).key


async def test_a_current_code_confirms_one_change_and_is_spent_with_it() -> None:
    w = world()
    admin = await set_up(w)
    secret, backup_codes = await enable_totp(w, admin)
    w.clock.advance(seconds=30)
    code = code_for(secret, step_of(w.clock.now()))
    issued = await w.handlers.issue_key(admin, NewKey(name="k"), StepUp(totp_code=code))
    accepted = w.store.events[admin.user_id][-1]
    assert isinstance(accepted, User.TotpCodeAccepted) and accepted.actor == admin.actor
    assert w.store.load(issued.key_id) is not None
    for refused in (code, wrong_code(secret, w.clock.now()), backup_codes[0]):
        with pytest.raises(InvalidTotpCode):
            await w.handlers.issue_key(admin, NewKey(name="again"), StepUp(totp_code=refused))
    with pytest.raises(InvalidCredentials):
        await w.handlers.issue_key(admin, NewKey(name="both"),
                                   StepUp(current_password="a guess", totp_code=code_for(secret, step_of(T0) + 2)))
    assert len(w.store.of_type(ApiKey.Issued)) == 1


async def test_setting_up_two_factor_needs_the_current_password() -> None:
    w = world()
    admin = await set_up(w)
    with pytest.raises(StepUpRequired):
        await w.handlers.totp_setup(admin, None)
    with pytest.raises(InvalidCredentials):
        await w.handlers.totp_setup(admin, StepUp(current_password="a guess"))
    with pytest.raises(InvalidTotpCode, match="off"):
        await w.handlers.totp_setup(admin, StepUp(totp_code="123456"))
    assert w.store.of_type(User.TotpSetupStarted) == [] and w.totp.issued == 3
    await enable_totp(w, admin)


async def test_ending_other_sessions_needs_step_up_but_ending_ones_own_does_not() -> None:
    w = world()
    admin = await set_up(w)
    other = await sign_in(w, "root")
    with pytest.raises(StepUpRequired):
        await w.handlers.logout(admin, everywhere=True)
    with pytest.raises(StepUpRequired):
        await w.handlers.end_session(admin, other.session_id)
    with pytest.raises(InvalidCredentials):
        await w.handlers.end_session(admin, other.session_id, StepUp(current_password="a guess"))
    assert len(active_sessions(w, admin.user_id)) == 2
    await w.handlers.end_session(admin, other.session_id, CONFIRMED)
    ended = w.store.load(other.session_id)
    assert isinstance(ended, Session) and ended.end_reason is EndReason.REVOKED
    third = await principal(w, await sign_in(w, "root"))
    await w.handlers.end_session(third, third.session_id or uuid4())
    assert await w.handlers.logout(admin) == 1
    assert active_sessions(w, admin.user_id) == []


async def test_only_sessions_and_admin_scope_keys_manage_sessions_and_keys() -> None:
    w = world()
    admin = await set_up(w)
    keys = {scope: await w.handlers.issue_key(admin, NewKey(name=scope.value, scope=scope), CONFIRMED)
            for scope in Scope}  # fmt: skip
    as_key = {scope: await w.handlers.authenticate_key(issued.key) for scope, issued in keys.items()}
    for scope in (Scope.READ, Scope.READ_WRITE):
        with pytest.raises(SessionRequired) as refused:
            await w.handlers.end_session(as_key[scope], admin.session_id or uuid4(), CONFIRMED)
        assert status_of(refused.value) == 403
        with pytest.raises(SessionRequired):
            await w.handlers.revoke_key(as_key[scope], keys[Scope.ADMIN].key_id)
    assert active_sessions(w, admin.user_id) == [admin.session_id]
    assert not w.store.of_type(ApiKey.Revoked)

    full = as_key[Scope.ADMIN]
    with pytest.raises(SessionRequired):
        await w.handlers.issue_key(full, NewKey(name="child"), CONFIRMED)
    with pytest.raises(StepUpRequired):
        await w.handlers.end_session(full, admin.session_id or uuid4())
    await w.handlers.end_session(full, admin.session_id or uuid4(), CONFIRMED)
    await w.handlers.revoke_key(full, keys[Scope.READ_WRITE].key_id)
    revoked = w.store.of_type(ApiKey.Revoked)
    assert [(e.originator_id, e.actor) for e in revoked if isinstance(e, ApiKey.Revoked)] == [
        (keys[Scope.READ_WRITE].key_id, full.actor)
    ]


async def test_keys_outlive_a_password_change_unless_it_revokes_them() -> None:
    w = world()
    admin = await set_up(w)
    await add_user(w, admin, "ann")
    ann = await principal(w, await sign_in(w, "ann"))
    anns = [await w.handlers.issue_key(ann, NewKey(name=f"k{i}"), CONFIRMED) for i in range(3)]
    await w.handlers.revoke_key(ann, anns[2].key_id)
    admins = await w.handlers.issue_key(admin, NewKey(name="admin's"), CONFIRMED)
    await w.handlers.logout(ann)
    ann = await principal(w, await sign_in(w, "ann"))
    await w.handlers.change_password(ann, PASSWORD, "a new passphrase")
    for issued in anns[:2]:
        assert (await w.handlers.authenticate_key(issued.key)).user_id == ann.user_id
    await w.handlers.change_password(ann, "a new passphrase", "another passphrase", revoke_api_keys=True)
    for issued in anns:
        with pytest.raises(ApiKeyInvalid, match="revoked"):
            await w.handlers.authenticate_key(issued.key)
    assert (await w.handlers.authenticate_key(admins.key)).user_id == admin.user_id
    revoked = w.store.of_type(ApiKey.Revoked)
    assert sorted((e.originator_id, e.actor) for e in revoked if isinstance(e, ApiKey.Revoked)) == sorted(
        (issued.key_id, ann.actor) for issued in anns
    ), "each of ann's keys revoked once, by ann"


async def test_an_administrator_resets_a_users_two_factor_and_ends_its_sessions() -> None:
    w = world()
    admin = await set_up(w)
    ann_id = await add_user(w, admin, "ann")
    ann = await principal(w, await sign_in(w, "ann"))
    secret, _ = await enable_totp(w, ann)
    await add_user(w, admin, "olga", Role.OPERATOR)
    olga = await principal(w, await sign_in(w, "olga"))
    with pytest.raises(InsufficientPermissions):
        await w.handlers.reset_totp(olga, ann_id)
    with pytest.raises(UserNotFound):
        await w.handlers.reset_totp(admin, uuid4())

    await w.handlers.reset_totp(admin, ann_id)
    [reset] = w.store.of_type(User.TotpReset)
    assert isinstance(reset, User.TotpReset) and reset.actor == admin.actor
    assert set(vars(reset)) == {"originator_id", "originator_version", "timestamp", "actor"}
    stored = w.store.load(ann_id)
    assert isinstance(stored, User) and not stored.totp_enabled
    assert (stored.totp_secret_sealed, stored.totp_pending, stored.backup_code_hashes) == (None, None, ())
    with pytest.raises(SessionEnded):
        await w.handlers.authenticate_session(ann.session_id or uuid4(), ann_id)
    assert admin.session_id in active_sessions(w, admin.user_id)
    await sign_in(w, "ann")
    with pytest.raises(TotpNotEnabled) as nothing:
        await w.handlers.reset_totp(admin, ann_id)
    assert status_of(nothing.value) == 409

    started = await w.handlers.totp_setup(await principal(w, await sign_in(w, "ann")), CONFIRMED)
    await w.handlers.reset_totp(admin, ann_id)
    assert secret != started.secret and len(w.store.of_type(User.TotpReset)) == 2
    stored = w.store.load(ann_id)
    assert isinstance(stored, User) and stored.totp_pending is None

