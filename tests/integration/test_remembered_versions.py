"""Per-request authentication answered from remembered versions, on the real PostgreSQL: a change stored
here is in force for the next request, one stored by another process within the watcher's bound, and
nothing is remembered while the watcher is away or from before a change."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from adapters.eventlog import EventLog
from adapters.eventstore import StoreUnitOfWork, WattLedger
from adapters.identity import Argon2Hasher, PyotpVerifier, RandomSecrets, open_secret_box
from adapters.identity_versions import WATCHER_NAME, NotingStore, RememberedVersions
from domain.access import Principal, Scope
from domain.errors import ApiKeyInvalid
from domain.identity_handlers import IdentityHandlers
from domain.identity_requests import Login, NewKey, SetupAdmin, StepUp
from domain.ports import IdentityReader
from projections.identity import IdentityReadModels
from projections.identity_activity import create_activity_tables
from tests.kit import ManualClock, eventually

PASSWORD = "correct horse battery"


class CountingReader(IdentityReadModels):
    """The real reader, counting the times it asks the store for versions."""

    def __init__(self, pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]]) -> None:
        super().__init__(pool)
        self.asked = 0

    async def versions(self, aggregate_ids: Sequence[UUID]) -> dict[UUID, int]:
        self.asked += 1
        return await super().versions(aggregate_ids)


@dataclass
class Process:
    """The identity side of one API process over the shared database."""

    handlers: IdentityHandlers
    reader: CountingReader
    versions: RememberedVersions


@dataclass
class Setup:
    here: Process
    elsewhere: IdentityHandlers
    """Another process's handlers: what they store reaches `here` only through the event log."""
    admin: Principal
    key: str
    key_id: UUID


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool[psycopg.AsyncConnection[Any]]]:
    opened: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
        database_url, min_size=1, max_size=4, open=False
    )
    await opened.open(wait=True)
    async with opened.connection() as conn:
        await create_activity_tables(conn)
    try:
        yield opened
    finally:
        await opened.close()


async def handlers(app: WattLedger, database_url: str, store: StoreUnitOfWork, reader: IdentityReader) -> IdentityHandlers:
    return IdentityHandlers(
        store, Argon2Hasher(time_cost=1, memory_cost=8192, parallelism=1), await open_secret_box(database_url),
        PyotpVerifier(), RandomSecrets(), ManualClock(datetime(2026, 3, 9, 8, 30, tzinfo=timezone.utc)), reader,
    )  # fmt: skip


async def build(app: WattLedger, database_url: str, pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]],
                *, channel: str | None, poll_s: float = 1.0) -> AsyncIterator[Setup]:  # fmt: skip
    reader = CountingReader(pool)
    versions = RememberedVersions(reader, database_url, channel=channel, poll_s=poll_s)
    here = Process(await handlers(app, database_url, NotingStore(app, versions), versions), reader, versions)
    elsewhere = await handlers(app, database_url, StoreUnitOfWork(app), IdentityReadModels(pool))
    try:
        await here.handlers.setup(SetupAdmin(username="root", password=PASSWORD))
        grant = await here.handlers.login(Login(username="root", password=PASSWORD))
        admin = await here.handlers.authenticate_session(grant.session_id, grant.user.user_id)
        issued = await here.handlers.issue_key(admin, NewKey(name="script", scope=Scope.READ),
                                               StepUp(current_password=PASSWORD))  # fmt: skip
        assert await versions.wait_live(10.0)
        await eventually(lambda: versions.through >= issued.position, what="the watcher reading the set-up", within=5.0)
        yield Setup(here=here, elsewhere=elsewhere, admin=admin, key=issued.key, key_id=issued.key_id)
    finally:
        await versions.close()


@pytest.fixture
async def setup(app: WattLedger, database_url: str, pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]]
                ) -> AsyncIterator[Setup]:  # fmt: skip
    async for built in build(app, database_url, pool, channel=EventLog(app).channel):
        yield built


async def test_a_remembered_key_costs_no_query_until_this_process_revokes_it(setup: Setup) -> None:
    here = setup.here
    await here.handlers.authenticate_key(setup.key)
    asked = here.reader.asked
    for _ in range(5):
        assert (await here.handlers.authenticate_key(setup.key)).key_id == setup.key_id
    assert here.reader.asked == asked

    await here.handlers.revoke_key(setup.admin, setup.key_id)
    with pytest.raises(ApiKeyInvalid, match="revoked"):
        await here.handlers.authenticate_key(setup.key)


async def test_a_key_revoked_by_another_process_stops_working_within_moments(setup: Setup) -> None:
    here = setup.here
    for _ in range(3):
        await here.handlers.authenticate_key(setup.key)
    await setup.elsewhere.revoke_key(setup.admin, setup.key_id)

    async def refused() -> bool:
        try:
            await here.handlers.authenticate_key(setup.key)
        except ApiKeyInvalid:
            return True
        return False

    # Woken by the store's notification: well within the 1 s poll.
    await eventually(refused, what="the revocation in force here", within=0.9, every=0.02)


async def test_without_notifications_the_poll_bounds_how_long_a_change_takes(
    app: WattLedger, database_url: str, pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]]
) -> None:
    async for setup in build(app, database_url, pool, channel=None, poll_s=0.3):
        here = setup.here
        await here.handlers.authenticate_key(setup.key)
        await setup.elsewhere.revoke_key(setup.admin, setup.key_id)
        began = asyncio.get_running_loop().time()
        with pytest.raises(ApiKeyInvalid):
            while asyncio.get_running_loop().time() - began < 3.0:
                await here.handlers.authenticate_key(setup.key)
                await asyncio.sleep(0.02)
        assert asyncio.get_running_loop().time() - began < 1.0


async def test_nothing_is_remembered_while_the_watcher_is_away(setup: Setup, database_url: str) -> None:
    here = setup.here
    await here.handlers.authenticate_key(setup.key)
    with psycopg.connect(database_url, autocommit=True) as conn:
        ended = conn.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = current_database()",
            (WATCHER_NAME,),
        ).fetchone()
    assert ended is not None and ended[0] == 1
    await eventually(lambda: not here.versions.live, what="the watcher noticing its connection ended", within=5.0)
    # Revoked while the watcher is away: in force for the very next request all the same.
    await setup.elsewhere.revoke_key(setup.admin, setup.key_id)
    with pytest.raises(ApiKeyInvalid, match="revoked"):
        await here.handlers.authenticate_key(setup.key)
    assert await here.versions.wait_live(10.0)


async def test_an_answer_read_before_a_change_is_never_remembered(setup: Setup) -> None:
    """A request that read the versions before another request stored a change must not leave the old
    answer in memory for the requests after the change."""
    here = setup.here
    reader = here.reader
    await here.handlers.authenticate_key(setup.key)
    here.versions.forget([setup.key_id])  # the next call asks the store
    release = asyncio.Event()
    original = reader.versions

    async def slow_versions(aggregate_ids: Sequence[UUID]) -> dict[UUID, int]:
        answer = await original(aggregate_ids)
        await release.wait()
        return answer

    reader.versions = slow_versions  # type: ignore[method-assign]
    stale = asyncio.create_task(here.handlers.authenticate_key(setup.key))
    await asyncio.sleep(0.1)
    reader.versions = original  # type: ignore[method-assign]
    await here.handlers.revoke_key(setup.admin, setup.key_id)
    release.set()
    assert (await stale).key_id == setup.key_id  # it was read before the revocation
    with pytest.raises(ApiKeyInvalid, match="revoked"):
        await here.handlers.authenticate_key(setup.key)
