"""The shared rate-limit counters against a real PostgreSQL: one count for every process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest
from structlog.testing import capture_logs

from adapters.ratelimits import MAX_WINDOW_S, TABLE, CountersUnavailable, Limit, PgRateCounters, Window
from tests.harness import free_port

# A window this long is not crossed while a test runs, so every count lands in one window.
LONG = MAX_WINDOW_S


@pytest.fixture
async def two_processes(database_url: str) -> AsyncIterator[tuple[PgRateCounters, PgRateCounters]]:
    """Two stores with their own pools over one database, as two API processes have."""
    first, second = PgRateCounters(database_url), PgRateCounters(database_url)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def test_two_processes_share_one_count(two_processes: tuple[PgRateCounters, PgRateCounters]) -> None:
    a, b = two_processes
    window = Window("ip", "203.0.113.7", Limit(100, LONG))
    counts = []
    for store in (a, b, a, b, b, a):
        (tally,) = await store.hit([window])
        counts.append(tally.count)
    assert counts == [1, 2, 3, 4, 5, 6]
    (peeked,) = await b.hit([], peek=[window])
    assert peeked.count == 6 and peeked.remaining == 94


async def test_concurrent_increments_from_two_processes_are_exact(
    two_processes: tuple[PgRateCounters, PgRateCounters],
) -> None:
    a, b = two_processes
    x = Window("ip", "198.51.100.1", Limit(1000, LONG))
    y = Window("ip", "198.51.100.2", Limit(1000, LONG))
    user = Window("user", "7b0c0f6e-2f57-4d5c-9a5a-0d3c8f1f1a11", Limit(1000, LONG))
    # Both orders of the same buckets at once: rows are locked in one order, so no deadlock.
    calls = [
        (a if i % 2 else b).hit([x, y] if i % 3 else [y, x], then=[user])
        for i in range(120)
    ]  # fmt: skip
    results = await asyncio.gather(*calls)
    for window in (x, y, user):
        counts = sorted(next(t for t in tallies if t.window == window).count or 0 for tallies in results)
        assert counts == list(range(1, 121)), window
    assert [t.count for t in await a.hit([], peek=[x, y, user])] == [120, 120, 120]


async def test_a_new_window_counts_from_one(two_processes: tuple[PgRateCounters, PgRateCounters]) -> None:
    a, b = two_processes
    window = Window("key", "4f1c2d", Limit(10, 1))
    first, second = (await a.hit([window]))[0], (await b.hit([window]))[0]
    while second.window_start != first.window_start:  # the window ended between the two
        first, second = second, (await b.hit([window]))[0]
    assert (first.count, second.count) == (1, 2)
    await asyncio.sleep(second.resets_in + 0.05)
    (after,) = await a.hit([window])
    assert after.window_start >= second.resets_at
    assert after.count == 1


async def test_the_second_stage_is_counted_only_while_the_first_admits(
    two_processes: tuple[PgRateCounters, PgRateCounters],
) -> None:
    a, _ = two_processes
    ip = Window("ip", "192.0.2.9", Limit(2, LONG))
    victim = Window("user", "victim", Limit(1000, LONG))
    seen = [[t.count for t in await a.hit([ip], then=[victim])] for _ in range(4)]
    assert seen == [[1, 1], [2, 2], [3, None], [4, None]]
    assert (await a.hit([], peek=[victim]))[0].count == 2


async def test_a_refund_takes_back_one_count(two_processes: tuple[PgRateCounters, PgRateCounters]) -> None:
    a, b = two_processes
    window = Window("user", "someone", Limit(5, LONG))
    await a.hit([window])
    (tally,) = await a.hit([window])
    await b.refund([tally])
    (peeked,) = await a.hit([], peek=[window])
    assert peeked.count == 1


async def test_a_sweep_deletes_ended_windows_only(
    database_url: str, two_processes: tuple[PgRateCounters, PgRateCounters]
) -> None:
    a, _ = two_processes
    short = Window("ip", "192.0.2.1", Limit(5, 1))
    long = Window("ip", "192.0.2.1", Limit(5, LONG))
    short_tally, _ = await a.hit([short, long])
    await asyncio.sleep(short_tally.resets_in + 0.05)
    assert await a.sweep() >= 1
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        rows = await (await conn.execute(f"SELECT bucket, count FROM {TABLE} ORDER BY bucket")).fetchall()
    assert rows == [(long.bucket, 1)]


async def test_an_unreachable_database_is_reported_once_and_raises_unavailable() -> None:
    store = PgRateCounters(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", timeout=0.3, backoff=60)
    window = Window("ip", "192.0.2.2", Limit(5, 60))
    try:
        with capture_logs() as logs:
            for _ in range(3):
                with pytest.raises(CountersUnavailable):
                    await store.hit([window])
    finally:
        await store.close()
    assert [entry["event"] for entry in logs if entry["log_level"] == "warning"] == ["ratelimit.counters_unavailable"]


async def test_counting_resumes_when_the_database_answers_again(database_url: str) -> None:
    """A table dropped under a running store (a restored or failed-over database) is created again."""
    store = PgRateCounters(database_url, backoff=0)
    window = Window("ip", "192.0.2.3", Limit(5, LONG))
    try:
        await store.hit([window])
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await conn.execute(f"DROP TABLE {TABLE}")
        with capture_logs() as logs:
            with pytest.raises(CountersUnavailable):
                await store.hit([window])
            (tally,) = await store.hit([window])
    finally:
        await store.close()
    assert tally.count == 1
    assert [entry["event"] for entry in logs] == ["ratelimit.counters_unavailable", "ratelimit.counters_recovered"]


async def test_requests_counted_in_memory_reach_the_shared_count_and_come_back(database_url: str) -> None:
    # Flushed only when told to, so the test sees each step.
    a, b = PgRateCounters(database_url, flush_every=3600), PgRateCounters(database_url, flush_every=3600)
    ip = Window("ip", "192.0.2.50", Limit(60, LONG))
    key = Window("key", "0f3c", Limit(1000, LONG))
    try:
        counted_a = [await a.count_requests([ip], [key]) for _ in range(30)]
        counted_b = [await b.count_requests([ip], [key]) for _ in range(20)]
        # Each process counts on from what the database last told it (its first request is counted
        # there, the others in memory): exact within the process, behind the others until a flush.
        assert [t[0].count for t in counted_a] == list(range(1, 31))
        assert [t[0].count for t in counted_b] == list(range(2, 22))
        await a.flush()
        await b.flush()
        (shared_ip, shared_key) = await a.hit([], peek=[ip, key])
        assert (shared_ip.count, shared_key.count) == (50, 50)
        # A process learns the others' counts when it next flushes its own.
        (behind, _) = await a.count_requests([ip], [key])
        assert behind.count == 32
        await a.flush()
        (caught_up, _) = await a.count_requests([ip], [key])
        assert caught_up.count == 52
        # Over the first stage's limit, the second is not counted, here as in `hit`.
        over = [await a.count_requests([ip], [key]) for _ in range(10)]
        assert [t[0].count for t in over] == list(range(53, 63))
        assert [t[1].count is None for t in over] == [False] * 8 + [True] * 2
        # A refund takes back what was counted in memory before it is ever flushed.
        await a.refund(over[0])
        await a.flush()
        (shared_ip, shared_key) = await b.hit([], peek=[ip, key])
        assert (shared_ip.count, shared_key.count) == (61, 59)
    finally:
        await a.close()
        await b.close()


async def test_counts_held_in_memory_are_flushed_on_close_and_by_the_flusher(database_url: str) -> None:
    closing, flushing = PgRateCounters(database_url, flush_every=3600), PgRateCounters(database_url, flush_every=0.05)
    window = Window("ip", "192.0.2.51", Limit(1000, LONG))
    try:
        for _ in range(5):
            await closing.count_requests([window])
        await closing.close()
        for _ in range(4):
            await flushing.count_requests([window])
        for _ in range(100):
            (peeked,) = await flushing.hit([], peek=[window])
            if peeked.count == 9:
                break
            await asyncio.sleep(0.05)
        assert peeked.count == 9
    finally:
        await closing.close()
        await flushing.close()


async def test_a_burst_on_a_fresh_process_asks_the_database_once(database_url: str) -> None:
    """Requests arriving while the first one reads the database's clock wait for it and count in
    memory, instead of each queueing for the counters' few connections."""
    store = PgRateCounters(database_url, flush_every=3600)
    window = Window("ip", "192.0.2.60", Limit(1000, LONG))
    statements = 0
    hit = store.hit

    async def counted_hit(*args: object, **kwargs: object) -> object:
        nonlocal statements
        statements += 1
        return await hit(*args, **kwargs)  # type: ignore[arg-type]

    store.hit = counted_hit  # type: ignore[assignment,method-assign]
    try:
        burst = await asyncio.gather(*(store.count_requests([window]) for _ in range(20)))
        await store.flush()
        (shared,) = await hit([], peek=[window])
    finally:
        await store.close()
    assert statements == 1
    assert sorted(tally.count or 0 for (tally,) in burst) == list(range(1, 21))
    assert shared.count == 20


async def test_failing_counters_are_tried_again_by_one_call_at_a_time() -> None:
    store = PgRateCounters(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", timeout=0.3, backoff=0)
    window = Window("ip", "192.0.2.61", Limit(5, 60))
    tries = 0
    connection = store._pool.connection

    def counted_connection(*args: object, **kwargs: object) -> object:
        nonlocal tries
        tries += 1
        return connection(*args, **kwargs)  # type: ignore[arg-type]

    store._pool.connection = counted_connection  # type: ignore[assignment,method-assign]
    try:
        with pytest.raises(CountersUnavailable):
            await store.hit([window])
        assert tries == 1
        # Past the back-off: five requests at once, one of them tries the database.
        answers = await asyncio.gather(*(store.hit([window]) for _ in range(5)), return_exceptions=True)
    finally:
        await store.close()
    assert all(isinstance(answer, CountersUnavailable) for answer in answers)
    assert tries == 2
