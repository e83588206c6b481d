"""Loading a meter day starts from its latest snapshot, and gives the aggregate a full replay gives."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from uuid import UUID

import psycopg
from eventsourcing.application import project_aggregate

from adapters.eventstore import SNAPSHOT_EVERY, WattLedger
from domain.meter import MeterDay
from domain.readings import DeviceSnapshot

DAY = datetime(2026, 6, 1, tzinfo=timezone.utc)
PLUG = DeviceSnapshot(
    alias="Heater", model="HS110", device_type="plug", mac="AA", firmware="1", is_on=True, has_emeter=True,
    power_w=1800.0, voltage_v=230.0, current_a=7.8, total_wh=1000.0,
)  # fmt: skip


def replayed(app: WattLedger, meter_id: UUID) -> MeterDay:
    """The meter day from every one of its events, no snapshot."""
    aggregate = project_aggregate(None, app.events.get(meter_id))
    assert isinstance(aggregate, MeterDay)
    return aggregate


def test_a_meter_day_loads_from_its_snapshot_without_its_earlier_events_and_equals_a_full_replay(
    app: WattLedger, database_url: str
) -> None:
    meter = MeterDay(device_id=UUID(int=7), day=DAY.date().isoformat())
    readings = 2 * SNAPSHOT_EVERY + 37
    for start in range(0, readings, 90):
        for i in range(start, min(start + 90, readings)):
            meter.record(DAY + timedelta(seconds=10 * i), PLUG, actor="poller")
        app.store(meter)
    late = DAY + timedelta(seconds=10 * 3 + 5)
    assert meter.needs_history(late)
    meter.recall(app.recorded_times(meter.id))
    assert meter.record(late, PLUG, actor="import") and not meter.record(DAY, PLUG, actor="import")
    app.store(meter)

    full = replayed(app, meter.id)
    loaded = app.load(meter.id)

    assert isinstance(loaded, MeterDay)
    assert vars(loaded) == vars(full)
    assert loaded.version == readings + 2 and loaded.count == readings + 1
    assert app.snapshots is not None
    # Taken as the saves of 90 readings passed versions 200 and 400: at the version each save reached.
    snapshots = [s.originator_version for s in app.snapshots.get(meter.id)]
    assert snapshots == [3 * 90 + 1, readings + 1]
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "DELETE FROM wl_events.wattledger_events WHERE originator_id = %s AND originator_version <= %s",
            (meter.id, snapshots[-1]),
        )
    from_snapshot = app.load(meter.id)
    assert isinstance(from_snapshot, MeterDay) and vars(from_snapshot) == vars(full)
