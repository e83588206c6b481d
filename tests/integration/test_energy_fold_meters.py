"""Within one batch, each reading of the energy read model counts on the meter its device had when it was read."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import psycopg

from adapters.eventstore import PollResult, WattLedger
from domain.device import Device
from domain.readings import DeviceSnapshot
from projections.energy import READINGS, EnergyProjector
from projections.engine import ProjectionEngine
from tests.kit import seed_device, seed_polls

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def plug(total_wh: float, mac: str = "AA:01") -> DeviceSnapshot:
    return DeviceSnapshot(
        alias="Heater", model="HS110", device_type="plug", mac=mac, firmware="1", is_on=True, has_emeter=True,
        power_w=60.0, voltage_v=230.0, current_a=0.3, total_wh=total_wh,
    )


def test_a_plug_restored_with_another_meter_counts_its_later_readings_of_the_same_batch_on_that_meter(
    app: WattLedger, database_url: str
) -> None:
    plugs = [seed_device(app, f"127.0.0.1:{13400 + i}", plug(100.0), measured_at=T0) for i in range(2)]
    for minute in (1, 2, 3):
        seed_polls(app, [PollResult(device_id=d, measured_at=T0 + timedelta(minutes=minute), snapshot=plug(100.0 + minute))
                         for d in plugs])  # fmt: skip
    device = app.repository.get(plugs[0])
    assert isinstance(device, Device)
    device.remove(actor="test")
    device.restore(plug(5.0, mac="BB:02"), alias=None, actor="test")
    app.save(device)
    for minute in (4, 5):
        seed_polls(app, [PollResult(device_id=d, measured_at=T0 + timedelta(minutes=minute), snapshot=plug(5.0 + minute))
                         for d in plugs])  # fmt: skip
    engine = ProjectionEngine(app, database_url, [EnergyProjector()], batch_size=5000)
    engine.setup()
    try:
        engine.catch_up_all()  # one batch: the device's events and every reading
        with psycopg.connect(database_url) as conn:
            kept = conn.execute(
                f"SELECT device_id, at, meter, wh FROM {READINGS.name} ORDER BY device_id, at"
            ).fetchall()
    finally:
        engine.close()
    by_device = {d: [(at, meter, wh) for e, at, meter, wh in kept if e == d] for d in plugs}
    restored = by_device[plugs[0]]
    assert [(at - T0) // timedelta(minutes=1) for at, _, _ in restored] == [0, 1, 2, 3, 4, 5]
    assert [meter for _, meter, _ in restored] == ["AA:01"] * 4 + ["BB:02"] * 2
    assert restored[4][2] is None, "a new meter's first reading closes no interval"
    assert [meter for _, meter, _ in by_device[plugs[1]]] == ["AA:01"] * 6
