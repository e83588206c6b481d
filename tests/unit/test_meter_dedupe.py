"""A meter day decides duplicates from a bounded state, and recalls the day's history only for old readings."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from eventsourcing.persistence import OperationalError
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.eventstore import SNAPSHOT_EVERY, SystemClock, WattLedger
from domain.commands import PollResult, RecordPolls
from domain.device import device_id_for
from domain.handlers import CommandHandlers
from domain.meter import RECENT_READINGS, HistoryNotRecalled, MeterDay
from tests.kit import MemoryStore, NoDevices, plug, save_devices

DAY = datetime(2026, 11, 22, tzinfo=timezone.utc)


def test_state_stays_bounded_however_many_readings_the_day_holds() -> None:
    meter = MeterDay(device_id=device_id_for("h"), day=DAY.date().isoformat())
    for i in range(500):
        assert meter.record(DAY + timedelta(seconds=10 * i), plug(), actor="p")

    assert meter.count == 500 and len(meter.recent) == RECENT_READINGS
    assert meter.forgotten == DAY + timedelta(seconds=10 * (500 - RECENT_READINGS - 1))
    assert not meter.record(DAY + timedelta(seconds=10 * 499), plug(), actor="p")
    assert meter.needs_history(DAY + timedelta(seconds=30))
    with pytest.raises(HistoryNotRecalled):
        meter.record(DAY + timedelta(seconds=30), plug(), actor="p")


def test_an_old_reading_is_decided_against_the_recalled_history_and_the_pending_readings() -> None:
    meter = MeterDay(device_id=device_id_for("h"), day=DAY.date().isoformat())
    for i in range(100):
        meter.record(DAY + timedelta(seconds=10 * i), plug(), actor="p")
    stored = {DAY + timedelta(seconds=10 * i) for i in range(50)}

    meter.recall(stored)

    assert not meter.needs_history(DAY)
    assert not meter.record(DAY + timedelta(seconds=10 * 70), plug(), actor="p"), "pending, not yet stored"
    assert not meter.record(DAY + timedelta(seconds=10), plug(), actor="p")
    assert meter.record(DAY + timedelta(seconds=5), plug(), actor="p")
    assert not meter.record(DAY + timedelta(seconds=5), plug(), actor="p")


@settings(max_examples=25, deadline=None)
@given(batches=st.lists(st.lists(st.integers(0, 80), min_size=1, max_size=40), min_size=1, max_size=8))
def test_through_reloads_every_timestamp_is_recorded_exactly_once(batches: list[list[int]]) -> None:
    """Every reading is decided on a fresh load from the store, which snapshots a meter day every 7 events."""

    async def scenario() -> tuple[int, list[datetime], int]:
        store = MemoryStore()
        setattr(store.app, "snapshotting_intervals", {MeterDay: 7})
        device = next(iter(await save_devices(store, plug(), 1)))
        handlers = CommandHandlers(store, NoDevices(), SystemClock())
        recorded = 0
        for batch in batches:
            results = tuple(PollResult(device_id=device, measured_at=DAY + timedelta(seconds=s), snapshot=plug())
                            for s in batch)  # fmt: skip
            for result in results:
                recorded += (await handlers.record_polls(RecordPolls(results=(result,), actor="p"))).recorded
        meter_id = MeterDay.create_id(device, DAY.date().isoformat())
        stream = store.app.events.get(meter_id)
        assert store.app.snapshots is not None
        snapshots = len(list(store.app.snapshots.get(meter_id)))
        return recorded, [e.measured_at for e in stream if isinstance(e, MeterDay.ReadingRecorded)], snapshots

    recorded, stored, snapshots = asyncio.run(scenario())

    distinct = {s for batch in batches for s in batch}
    assert recorded == len(distinct) == len(stored) == len(set(stored))
    assert snapshots == (len(stored) + 1) // 7


def test_a_snapshot_that_cannot_be_stored_leaves_the_saved_readings_stored() -> None:
    app = WattLedger({"PERSISTENCE_MODULE": "eventsourcing.popo"})

    def refuse(*_: object, **__: object) -> None:
        raise OperationalError("server closed the connection unexpectedly")

    assert app.snapshots is not None
    setattr(app.snapshots, "put", refuse)
    meter = MeterDay(device_id=device_id_for("h"), day=DAY.date().isoformat())
    for i in range(SNAPSHOT_EVERY):
        meter.record(DAY + timedelta(seconds=10 * i), plug(), actor="p")

    assert app.store(meter) > 0

    loaded = app.load(meter.id)
    assert isinstance(loaded, MeterDay) and loaded.count == SNAPSHOT_EVERY
