"""A replay keeps the rows it wrote between sections (`Table.take` / `Table.keep`) and gives the same read models."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import psycopg
import pytest

from adapters.eventstore import PollResult, WattLedger
from domain.calendar import LocalCalendar
from domain.energy import EnergyRules
from domain.meter import MeterDay
from domain.readings import DeviceSnapshot
from projections.alerts import AlertsProjector
from projections.devices import DEVICES, DeviceRow, DevicesProjector
from projections.engine import ProjectionEngine, Projector
from projections.tables import building
from projections.tracking import QUARANTINE
from tests.kit import seed_device, seed_polls

T0 = datetime(2026, 3, 1, 23, 50, tzinfo=timezone.utc)


def plug(total_wh: float, mac: str) -> DeviceSnapshot:
    return DeviceSnapshot(
        alias="Kettle", model="HS110", device_type="plug", mac=mac, firmware="1", is_on=True, has_emeter=True,
        power_w=1800.0, voltage_v=230.0, current_a=7.8, total_wh=total_wh,
    )


def test_a_kept_row_is_handed_over_once_and_a_row_not_given_back_is_read_from_the_table(database_url: str) -> None:
    row = DeviceRow(device_id=UUID(int=1), address="127.0.0.1:9", alias="kept", model="m", device_type="plug",
                    mac="AA", added_at=T0, updated_at=T0)  # fmt: skip
    kept: dict[int, dict[Any, Any]] = {}
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS wl_kept CASCADE")
        cur.execute("CREATE SCHEMA wl_kept")
        with building("wl_kept", [DEVICES], kept):
            DEVICES.create(cur)
            DEVICES.write(cur, [DEVICES.values(row)])
            DEVICES.keep([row])
            cur.execute(f"UPDATE {DEVICES.name} SET alias = 'in the table'")
            taken = DEVICES.take(cur, [row.device_id])
            assert taken[row.device_id] is row  # kept, not read again
            row.alias = "changed, never written"  # a batch that fails does not give it back
            assert DEVICES.take(cur, [row.device_id])[row.device_id].alias == "in the table"
        with building("wl_kept", [DEVICES]):  # a replay that keeps nothing reads the table
            assert DEVICES.take(cur, [row.device_id])[row.device_id].alias == "in the table"
            assert not DEVICES.take(cur, [UUID(int=2)])
        cur.execute("DROP SCHEMA wl_kept CASCADE")
        conn.commit()


def test_a_batch_failing_after_it_changed_taken_rows_leaves_the_replay_equal_to_the_live_read_models(
    app: WattLedger, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugs = [seed_device(app, f"127.0.0.1:{13100 + i}", plug(10.0 * i, f"M{i}"), measured_at=T0) for i in range(2)]
    poison = T0 + timedelta(minutes=7)
    for minute in range(1, 13):
        at = T0 + timedelta(minutes=minute)
        # The reading that fails reads the counter reset: folded in, it would change the energy counted after it.
        seed_polls(app, [PollResult(device_id=d, measured_at=at,
                                    snapshot=plug(0.5 if (i, at) == (0, poison) else 10.0 * i + minute, f"M{i}"))
                         for i, d in enumerate(plugs)])  # fmt: skip
    folded = DeviceRow._reading

    def failing(self: DeviceRow, event: MeterDay.ReadingRecorded, calendar: LocalCalendar, rules: EnergyRules) -> None:
        folded(self, event, calendar, rules)  # the row is changed in place, then the batch fails
        if event.device_id == plugs[0] and event.measured_at == poison:
            raise ValueError("a reading this read model cannot apply")

    monkeypatch.setattr(DeviceRow, "_reading", failing)
    projectors: list[Projector] = [DevicesProjector(), AlertsProjector()]
    engine = ProjectionEngine(app, database_url, projectors, batch_size=5000, replay_batch_size=5)
    engine.setup()
    try:
        engine.catch_up_all()
        with psycopg.connect(database_url) as conn:
            quarantined = conn.execute(f"SELECT projector, position FROM {QUARANTINE}").fetchall()
            live = conn.execute(f"{DEVICES.select} ORDER BY device_id").fetchall()
        assert [name for name, _ in quarantined] == ["devices"]
        assert engine.verify(["devices", "alerts"]) == []
        engine.rebuild_many(["devices", "alerts"])
        with psycopg.connect(database_url) as conn:
            assert conn.execute(f"{DEVICES.select} ORDER BY device_id").fetchall() == live
            assert conn.execute(f"SELECT projector, position FROM {QUARANTINE}").fetchall() == quarantined
        rows = {r.device_id: r for r in map(DEVICES.decode, live)}
        assert rows[plugs[0]].last_seen == rows[plugs[1]].last_seen == T0 + timedelta(minutes=12)
        assert rows[plugs[0]].today_wh == rows[plugs[1]].today_wh  # the failed reading counted nothing
    finally:
        engine.close()
