"""Keyset pages of the stored events: bounded windows for filters the store has no index for."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from adapters.history import EventFilter, read_page
from projections.audit import read_events_page
from tests.harness import AuditedStore


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


async def test_the_audit_logs_indexes_fill_every_page_and_the_unprojected_tail_is_still_found(
    store: AuditedStore,
) -> None:
    store.project()
    store.readings(2, start=7)  # stored after the audit log's position: found by the bounded scan
    readings = [n.id for n in store.app.recorder.select_notifications(start=1, limit=100)
                if n.topic.endswith("ReadingRecorded")]  # fmt: skip
    readings = readings[1:]  # the first came with the device, recorded by its user
    where = EventFilter(event_type="ReadingRecorded", actor="test")
    found: list[int] = []
    sizes: list[int] = []
    after = 0
    async with await psycopg.AsyncConnection.connect(store.url) as conn:
        while True:
            page = await read_events_page(conn, store.app, where, after=after, limit=3, scan=1)
            found += [e.notification_id for e in page.events]
            sizes.append(len(page.events))
            if page.next_position is None:
                break
            after = page.next_position
    assert found == readings
    # Six projected readings come in two full pages, however far apart they lie in the log.
    assert sizes[:2] == [3, 3]
