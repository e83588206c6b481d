"""Keyset pages of the stored events: bounded windows for filters the store has no index for."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from adapters.history import EventFilter, read_page
from projections.audit import read_events_page
from tests.harness import AuditedStore
from tests.kit import seed_polls


@pytest.fixture
def store(database_url: str) -> Iterator[AuditedStore]:
    s = AuditedStore(database_url)
    s.readings(6)
    yield s
    s.close()


async def walk(store: AuditedStore, where: EventFilter, *, limit: int, scan: int) -> tuple[list[int], int]:
    """Every position the pages return, and how many pages it took."""
    positions: list[int] = []
    after, pages = 0, 0
    async with await psycopg.AsyncConnection.connect(store.url) as conn:
        while True:
            page = await read_page(conn, store.app, where, after=after, limit=limit, scan=scan)
            pages += 1
            positions += [e.notification_id for e in page.events]
            if page.next_position is None:
                return positions, pages
            assert page.next_position > after
            after = page.next_position


async def test_a_filtered_walk_returns_exactly_the_matches_in_order_through_short_pages(store: AuditedStore) -> None:
    everything = [n.id for n in store.app.recorder.select_notifications(start=1, limit=100)]
    readings = [n.id for n in store.app.recorder.select_notifications(start=1, limit=100)
                if n.topic.endswith("ReadingRecorded")]  # fmt: skip
    found, pages = await walk(store, EventFilter(event_type="ReadingRecorded"), limit=3, scan=3)
    # Positions 1-3 hold no reading: the first page is empty and still leads on.
    assert found == readings and pages >= -(-everything[-1] // 3)
    device_events, _ = await walk(store, EventFilter(aggregate="device", actor="user:alice"), limit=1, scan=4)
    assert device_events == everything[:2]
    plain, pages = await walk(store, EventFilter(), limit=4, scan=3)
    assert plain == everything and pages == -(-len(everything) // 4)
    by_stream, _ = await walk(store, EventFilter(originator_id=store.device), limit=1, scan=1)
    assert by_stream == everything[:2]


async def pages_of(store: AuditedStore, where: EventFilter) -> tuple[list[int], list[int]]:
    """Every position `read_events_page` returns (pages of 3, a scan of 1), and each page's size."""
    found: list[int] = []
    sizes: list[int] = []
    after = 0
    async with await psycopg.AsyncConnection.connect(store.url) as conn:
        while True:
            page = await read_events_page(conn, store.app, where, after=after, limit=3, scan=1)
            found += [e.notification_id for e in page.events]
            sizes.append(len(page.events))
            if page.next_position is None:
                return found, sizes
            after = page.next_position


async def test_the_audit_logs_indexes_fill_every_page_of_actions_and_readings_are_found_in_the_log(
    store: AuditedStore,
) -> None:
    for minute in range(20, 23):
        seed_polls(store.app, [], offline={store.device: 3})
        store.readings(1, start=minute)
    store.project()
    store.readings(2, start=30)  # stored after the audit log's position: found by the bounded scan
    notifications = store.app.recorder.select_notifications(start=1, limit=100)
    actions = [n.id for n in notifications if n.topic.endswith(("Device.WentOffline", "Device.CameOnline"))]
    readings = [n.id for n in notifications if n.topic.endswith("ReadingRecorded")][1:]  # the first is alice's

    found, sizes = await pages_of(store, EventFilter(aggregate="device", actor="test"))

    assert found == actions and len(actions) == 6
    # Actions spread over the log come in full pages from the audit log's indexes.
    assert sizes[:2] == [3, 3]
    found, _ = await pages_of(store, EventFilter(event_type="ReadingRecorded", actor="test"))
    assert found == readings, "readings have no audit row: they are found by reading the log"
